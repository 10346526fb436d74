"""Startup: `svdlora --help` and `svdlora cache info` against `import torch`, side by side.

python benchmarks/bench_startup.py --repeats 5

Each round runs every command once, in turn, in a fresh process; the figures are
medians of wall time (and of CPU time, user + system, which a loaded machine inflates
less). `python -c pass` is the interpreter's own floor, and `import torch` is what a
command pays when it imports the ML stack (what these two no longer do).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _svdlora() -> list[str]:
    """The console script beside this interpreter, else `python -m svdlora_cli`."""
    script = Path(sys.executable).with_name("svdlora")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "svdlora_cli"]


def _run(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the document here")
    args = parser.parse_args()
    cache_dir = tempfile.mkdtemp(prefix="svdlora-startup-bench-")
    env = {**os.environ, "SVDLORA_CACHE_DIR": cache_dir}
    env.pop("SVDLORA_CONFIG", None)
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "svdlora --help": [*_svdlora(), "--help"],
        "svdlora cache info": [*_svdlora(), "cache", "info"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    }
    for command in commands.values():  # warm the OS file cache once
        _run(command, env)
    times: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, command in commands.items():
            wall, used = _run(command, env)
            times[name].append(wall)
            cpu[name].append(used)
    median = {name: round(statistics.median(ts), 3) for name, ts in times.items()}
    torch_s = median["python -c 'import torch'"]
    doc = {
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "median_s": median,
        "min_s": {name: round(min(ts), 3) for name, ts in times.items()},
        "median_cpu_s": {name: round(statistics.median(ts), 3) for name, ts in cpu.items()},
        "ratio_to_import_torch": {
            name: round(median[name] / torch_s, 3)
            for name in ("svdlora --help", "svdlora cache info")
        },
        "targets_met": {
            "svdlora --help < 0.3 s": median["svdlora --help"] < 0.3,
            "svdlora cache info < 0.5 s": median["svdlora cache info"] < 0.5,
        },
    }
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
