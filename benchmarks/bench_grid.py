"""A `train` grid against the same runs as separate commands, side by side in one run.

python benchmarks/bench_grid.py --model smollm2-135m --steps 3 --repeats 2

The grid is `svdlora train --learning-rates 2e-4,1e-3 --seeds 0,1` (four runs in one
process: the base is loaded once, the step-0 row of identical starts computed once);
the separate way is four `svdlora train --learning-rate LR --seeds S` commands. Both
are timed as whole processes (start-up, loading, evaluation, saving included), in
alternating order; the ratio of the medians is the figure. The eval set is the demo's
first 16 rows by default (`--eval-limit 0`: all 240, where each run's final eval
loss, which no grid can share, is most of a 3-step run). Each run's final loss must
be the same both ways, or the script fails: a faster grid that trains something else
would be no result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RATES = ("2e-4", "1e-3")
SEEDS = ("0", "1")


def timed(cmd: list[str]) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds, json.loads(proc.stdout)["arms"]


def main() -> None:
    from svdlora_cli.models.refs import resolve_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--eval-limit", type=int, default=16, help="eval rows (the demo's 16; 0: all 240)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model = str(resolve_model_path(args.model))
    common = [
        *(sys.executable, "-m", "svdlora_cli", "train", "-b", model),
        *("--max-steps", str(args.steps), "--device", args.device, "--json"),
        *(("--eval-limit", str(args.eval_limit)) if args.eval_limit else ()),
    ]
    times: dict[str, list[float]] = {"grid": [], "separate": []}
    for repeat in range(args.repeats):
        out = Path(tempfile.mkdtemp(prefix="svdlora-grid-bench-"))
        finals: dict[str, dict[tuple[str, str], float]] = {}
        for way in ("grid", "separate") if repeat % 2 == 0 else ("separate", "grid"):
            if way == "grid":
                grid = ["--learning-rates", ",".join(RATES), "--seeds", ",".join(SEEDS)]
                seconds, arms = timed([*common, *grid, "-o", str(out / "grid")])
            else:
                seconds, arms = 0.0, []
                for lr in RATES:
                    for seed in SEEDS:
                        folder = str(out / f"lr{lr}_seed{seed}")
                        took, runs = timed(
                            [*common, "--learning-rate", lr, "--seeds", seed, "-o", folder]
                        )
                        seconds += took
                        arms += runs
            finals[way] = {(a["learning_rate"], a["seed"]): a["final_loss"] for a in arms}
            times[way].append(seconds)
            print(f"repeat {repeat + 1} {way}: {seconds:.1f} s", flush=True)
        if finals["grid"] != finals["separate"]:
            sys.exit(f"the grid trained something else: {finals}")
    grid, separate = (statistics.median(times[k]) for k in ("grid", "separate"))
    figures = {
        "model": args.model,
        "steps": args.steps,
        "repeats": args.repeats,
        "runs": len(RATES) * len(SEEDS),
        "eval_limit": args.eval_limit or None,
        "grid_seconds": round(grid, 2),
        "separate_seconds": round(separate, 2),
        "ratio": round(grid / separate, 3),
        "grid_seconds_each": [round(t, 2) for t in times["grid"]],
        "separate_seconds_each": [round(t, 2) for t in times["separate"]],
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
