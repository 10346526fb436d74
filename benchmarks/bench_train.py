"""Training throughput: `svdlora train` against a minimal PEFT loop, alternating, same batches.

python benchmarks/bench_train.py --model smollm2-135m --steps 20 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    from svdlora_cli.model_refs import resolve_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model = str(resolve_model_path(args.model))
    ours, minimal = [], []
    for repeat in range(args.repeats):
        out = tempfile.mkdtemp(prefix="svdlora-train-bench-")
        runs = {
            "svdlora": [
                sys.executable,
                "-m",
                "svdlora_cli",
                "train",
                "-b",
                model,
                "--init",
                "random",
                "--max-steps",
                str(args.steps),
                "--device",
                "cpu",
                "--eval-limit",
                "1",
                "-o",
                out,
                "--json",
            ],
            "minimal": [
                sys.executable,
                str(HERE / "minimal_peft_loop.py"),
                model,
                "--steps",
                str(args.steps),
            ],
        }
        order = ["svdlora", "minimal"] if repeat % 2 == 0 else ["minimal", "svdlora"]
        for name in order:
            proc = subprocess.run(runs[name], capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
            doc = json.loads(proc.stdout)
            speed = doc["arms"][0]["tokens_per_s"] if name == "svdlora" else doc["tokens_per_s"]
            (ours if name == "svdlora" else minimal).append(speed)
            print(f"repeat {repeat + 1} {name}: {speed:.1f} tokens/s", flush=True)
    figures = {
        "model": args.model,
        "steps": args.steps,
        "repeats": args.repeats,
        "svdlora_tokens_per_s": round(statistics.median(ours), 1),
        "minimal_tokens_per_s": round(statistics.median(minimal), 1),
        "ratio": round(statistics.median(ours) / statistics.median(minimal), 3),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
