"""Reading a pair's target tensors as the SVD job does, with glibc's malloc as it comes and
as every svdlora command tunes it (svdlora_cli/cli/allocator.py), side by side.

    python benchmarks/bench_read.py --pair /tmp/pairs/q15 --repeats 2

Each setting runs in its own child process (the allocator is set per process), in
alternating order: the targets read in one thread, then through the SVD job's prefetch
thread (`prefetched`), each tensor dropped once read. Reported per setting: the median
seconds and minor page faults of both ways; then the ratio of the prefetched medians.
The page cache is warmed by a first untimed pass.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time
from svdlora_cli.cli.allocator import tune_malloc
from svdlora_cli.models.checkpoints import TensorReader, open_pair
from svdlora_cli.spectra.delta import pair_targets
from svdlora_cli.spectra.svd_job import prefetched

said = tune_malloc()
pair = open_pair(sys.argv[1] + "/base", sys.argv[1] + "/tuned", None, with_fingerprints=False)
names = [t.tensor for t in pair_targets(pair)[0]]

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def direct():
    with TensorReader(pair.base) as b, TensorReader(pair.tuned) as t:
        for name in names:
            b.get(name), t.get(name)

def threaded():
    for _ in prefetched(pair, names):
        pass

threaded()  # the page cache warm, and the allocator's first growth done
out = {"malloc": said, "targets": len(names)}
for label, read in (("direct", direct), ("prefetched", threaded)):
    before, start = faults(), time.perf_counter()
    read()
    out[label + "_s"] = time.perf_counter() - start
    out[label + "_faults"] = faults() - before
print(json.dumps(out))
"""


def child(pair: Path, tuned: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SVDLORA_MALLOC"}
    if not tuned:
        env["SVDLORA_MALLOC"] = "system"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(pair)], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        sys.exit(f"the reading child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", type=Path, required=True, help="a make_pair.py folder")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"system": [], "tuned": []}
    for repeat in range(args.repeats):
        order = ("system", "tuned") if repeat % 2 == 0 else ("tuned", "system")
        for label in order:
            runs[label].append(child(args.pair, label == "tuned"))
            last = runs[label][-1]
            print(
                f"repeat {repeat + 1} {label}: direct {last['direct_s']:.2f} s "
                f"({last['direct_faults']} faults), prefetched {last['prefetched_s']:.2f} s "
                f"({last['prefetched_faults']} faults)",
                file=sys.stderr,
            )
    figures: dict = {"pair": str(args.pair), "repeats": args.repeats}
    for label, found in runs.items():
        figures[f"{label}_malloc"] = found[0]["malloc"]
        for key in ("direct_s", "direct_faults", "prefetched_s", "prefetched_faults"):
            figures[f"{label}_{key}"] = statistics.median(r[key] for r in found)
    figures["prefetched_speedup"] = round(
        figures["system_prefetched_s"] / figures["tuned_prefetched_s"], 2
    )
    text = json.dumps(figures, indent=2)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
