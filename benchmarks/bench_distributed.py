"""`svdlora svd` in one process against the same command split over N torchrun processes.

    python benchmarks/bench_distributed.py --pair /tmp/pairs/q05 --processes 2 --repeats 2

Both run cold (a fresh cache each time), in alternating order, in one run of this script:

- one process with every core (torch's default thread count);
- N processes under torchrun, each with cores / N threads;
- one process with cores / N threads, the per-process setting of the launch.

The launch must write the same adapter bytes as the run with the same per-process thread
count (BLAS sums in a thread-dependent order, so a different count moves the last bits).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench_extract import svdlora, timed

from svdlora_cli.distributed import free_port

TORCHRUN = Path(sys.executable).with_name("torchrun")


def run(cmd: list[str], threads: int, label: str) -> dict:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        return timed(cmd, label)
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)


def rank_seconds(cache_dir: Path) -> dict[int, float]:
    """Seconds each rank spent forming and decomposing its share (from the cache index)."""
    from svdlora_cli.store.cache import ArtifactCache

    cache = ArtifactCache(cache_dir)
    totals: dict[int, float] = {}
    for entry in cache.entries():
        if entry["kind"] == "svd":
            totals[entry["rank"]] = totals.get(entry["rank"], 0.0) + entry["seconds"]
    cache.close()
    return {rank: round(total, 2) for rank, total in sorted(totals.items())}


def adapter(out: Path, rank: int) -> bytes:
    return (out / f"adapter_rank{rank}" / "adapter_model.safetensors").read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", type=Path, required=True, help="folder with base/ and tuned/")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--method", default="auto")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    os.environ["SVDLORA_NO_PROGRESS"] = "1"
    cores = os.cpu_count() or 1
    per_process = max(1, cores // args.processes)
    walls: dict[str, list[float]] = {"single": [], "launch": [], "single_same_threads": []}
    identical, balance = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for repeat in range(args.repeats):
            outs = {}
            order = ["single", "launch", "single_same_threads"]
            for label in order if repeat % 2 == 0 else order[::-1]:
                out, cache = root / f"{label}{repeat}", root / f"cache-{label}{repeat}"
                cmd = svdlora(args.pair, args.rank, cache, out, "cpu", args.method)
                if label == "launch":
                    launcher = [str(TORCHRUN), f"--nproc_per_node={args.processes}"]
                    cmd = [*launcher, f"--master_port={free_port()}", *cmd[1:]]
                threads = cores if label == "single" else per_process
                walls[label].append(run(cmd, threads, label)["wall_s"])
                outs[label] = out
            balance.append(rank_seconds(root / f"cache-launch{repeat}"))
            reference = adapter(outs["single_same_threads"], args.rank)
            identical.append(adapter(outs["launch"], args.rank) == reference)
    single, launch, same = (
        round(statistics.median(walls[k]), 2) for k in ("single", "launch", "single_same_threads")
    )
    figures = {
        "pair": str(args.pair),
        "rank": args.rank,
        "cores": cores,
        "processes": args.processes,
        "threads_per_process": per_process,
        "single_s": single,
        "launch_s": launch,
        "single_same_threads_s": same,
        "speedup_vs_single": round(single / launch, 2),
        "speedup_vs_same_threads": round(same / launch, 2),
        "adapter_identical": all(identical),
        # Decomposition seconds per rank: the split is balanced when these are close.
        "rank_seconds": balance,
        "max_over_mean_load": round(
            max(max(b.values()) / statistics.fmean(b.values()) for b in balance), 3
        ),
        "walls": walls,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
