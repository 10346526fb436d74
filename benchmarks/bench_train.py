"""Training throughput: `svdlora train` against a minimal PEFT loop, alternating, same batches.

python benchmarks/bench_train.py --model smollm2-135m --steps 20 --repeats 3

Three runs per repeat, in rotating order: the minimal loop (`minimal_peft_loop.py`:
svdlora's batches, padded to each micro-batch's longest row, `model(**batch).loss`),
`svdlora train` with packed micro-batches (the default) and with `--no-packing`.
Tokens are real (non-padding) tokens; model loading and evaluation are excluded.
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
    from svdlora_cli.models.refs import resolve_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model = str(resolve_model_path(args.model))
    speeds: dict[str, list[float]] = {"minimal": [], "svdlora": [], "svdlora_no_packing": []}
    for repeat in range(args.repeats):
        out = tempfile.mkdtemp(prefix="svdlora-train-bench-")
        train = [
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
            "--json",
        ]
        runs = {
            "svdlora": [*train, "-o", f"{out}/packed"],
            "svdlora_no_packing": [*train, "--no-packing", "-o", f"{out}/padded"],
            "minimal": [
                sys.executable,
                str(HERE / "minimal_peft_loop.py"),
                model,
                "--steps",
                str(args.steps),
            ],
        }
        names = list(runs)
        order = names[repeat % 3 :] + names[: repeat % 3]
        for name in order:
            proc = subprocess.run(runs[name], capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
            doc = json.loads(proc.stdout)
            speed = doc["tokens_per_s"] if name == "minimal" else doc["arms"][0]["tokens_per_s"]
            speeds[name].append(speed)
            print(f"repeat {repeat + 1} {name}: {speed:.1f} tokens/s", flush=True)
    figures = {
        "model": args.model,
        "steps": args.steps,
        "repeats": args.repeats,
        **{f"{name}_tokens_per_s": round(statistics.median(v), 1) for name, v in speeds.items()},
        "ratio": round(
            statistics.median(speeds["svdlora"]) / statistics.median(speeds["minimal"]), 3
        ),
        "ratio_no_packing": round(
            statistics.median(speeds["svdlora_no_packing"]) / statistics.median(speeds["minimal"]),
            3,
        ),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
