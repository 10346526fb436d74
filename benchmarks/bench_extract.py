"""Time `svdlora svd` against the naive seed-style extraction, side by side in one run.

    python benchmarks/bench_extract.py --pair /tmp/pairs/q05 --rank 16 --repeats 3

Each repeat runs the naive baseline and svdlora as separate processes, in
alternating order, under /usr/bin/time for wall time and peak RSS. svdlora runs
cold (a fresh cache each repeat), then warm at a smaller rank on the same
cache. Accuracy: svdlora's per-module energy against the exact SVD's, and the
relative error of the top-r singular values.
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

HERE = Path(__file__).resolve().parent


def timed(cmd: list[str], label: str) -> dict:
    """Wall seconds and peak RSS (MB) of one child process."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as stats:
        start = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "%e %M", "-o", stats.name, *cmd], capture_output=True, text=True
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"{label} failed:\n{proc.stderr[-3000:]}")
        _, rss_kb = stats.read().split()[-2:]
    return {"wall_s": round(wall, 2), "rss_mb": round(int(rss_kb) / 1024, 1), "stdout": proc.stdout}


def svdlora(pair: Path, rank: int, cache: Path, out: Path, device: str, method: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "svdlora_cli",
        "svd",
        "-b",
        str(pair / "base"),
        "-t",
        str(pair / "tuned"),
        "--rank",
        str(rank),
        "--method",
        method,
        "--device",
        device,
        "--no-plot",
        "--json",
        "--cache-dir",
        str(cache),
        "-o",
        str(out),
    ]


def accuracy(ours: dict, exact: dict, rank: int) -> dict:
    energy_pp, top_rel = [], []
    for module in ours["modules"]:
        ref = exact[module["name"]]
        energy_pp.append(abs(module["energy"] - ref["energy"]) * 100)
        for mine, theirs in zip(module["singular_values"][:rank], ref["top"], strict=False):
            top_rel.append(abs(mine - theirs) / theirs if theirs else 0.0)
    return {
        "max_energy_diff_pp": max(energy_pp),
        "mean_energy_diff_pp": statistics.fmean(energy_pp),
        "max_top_r_sv_rel_error": max(top_rel),
    }


def fingerprint_repeat(pair: Path, cache: Path) -> float:
    """Seconds for a second look at an already fingerprinted pair (memo hit)."""
    code = (
        "import time,sys; from svdlora_cli.cache import ArtifactCache; "
        "from svdlora_cli.checkpoints import open_pair; c=ArtifactCache(sys.argv[3]); "
        "t=time.perf_counter(); open_pair(sys.argv[1], sys.argv[2], c.memo); "
        "print(time.perf_counter()-t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(pair / "base"), str(pair / "tuned"), str(cache)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", type=Path, required=True)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--warm-rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--method", default="auto")
    parser.add_argument("--no-naive", action="store_true", help="skip the baseline (it cannot fit)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="svdlora-bench-"))
    naive, cold, warm, exact, ours = [], [], [], None, None
    naive_cmd = [
        sys.executable,
        str(HERE / "naive_extract.py"),
        str(args.pair / "base"),
        str(args.pair / "tuned"),
        "--rank",
        str(args.rank),
        "--out",
        str(work / "naive.json"),
    ]
    for repeat in range(args.repeats):
        cache = work / f"cache{repeat}"
        commands = {
            "ours": svdlora(args.pair, args.rank, cache, work / "out", args.device, args.method),
            "naive": naive_cmd,
        }
        order = ["ours", "naive"] if repeat % 2 == 0 else ["naive", "ours"]
        for name in order:
            if name == "naive" and args.no_naive:
                continue
            result = timed(commands[name], name)
            (cold if name == "ours" else naive).append(result)
            print(
                f"repeat {repeat + 1} {name}: {result['wall_s']} s, {result['rss_mb']} MB",
                flush=True,
            )
        ours = json.loads(cold[-1]["stdout"])
        warm_cmd = svdlora(
            args.pair, args.warm_rank, cache, work / "warm", args.device, args.method
        )
        warm.append(timed(warm_cmd, "svdlora warm"))
        print(f"repeat {repeat + 1} warm rank {args.warm_rank}: {warm[-1]['wall_s']} s", flush=True)
    if not args.no_naive:
        exact = json.loads((work / "naive.json").read_text())

    def median(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    figures = {
        "pair": str(args.pair),
        "rank": args.rank,
        "repeats": args.repeats,
        "device": args.device,
        "method": args.method,
        "svdlora_cold_s": median(cold, "wall_s"),
        "svdlora_cold_rss_mb": median(cold, "rss_mb"),
        "svdlora_warm_s": median(warm, "wall_s"),
        "warm_rank": args.warm_rank,
        "cold_over_warm": round(median(cold, "wall_s") / median(warm, "wall_s"), 2),
        "fingerprint_repeat_s": round(fingerprint_repeat(args.pair, work / "cache0"), 3),
        "modules": len(ours["modules"]) if ours else None,
    }
    if naive:
        figures.update(
            naive_s=median(naive, "wall_s"),
            naive_rss_mb=median(naive, "rss_mb"),
            speedup=round(median(naive, "wall_s") / median(cold, "wall_s"), 2),
            rss_ratio=round(median(naive, "rss_mb") / median(cold, "rss_mb"), 2),
            **accuracy(ours, exact, args.rank),
        )
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
