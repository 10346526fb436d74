"""Rank sweep from one decomposition: energy captured per rank, with every rank a cache hit.

    python examples/rank_sweep.py BASE TUNED --ranks 4 8 16 32 64

The first rank decomposes each target once (keeping 64 factors); every other
rank is a slice of the cached factors, so the sweep costs one SVD per tensor.
"""

from __future__ import annotations

import argparse
import json
import sys

from svdlora_cli import ArtifactCache, SvdloraError, default_cache_dir, run_svd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("tuned")
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    cache = ArtifactCache(args.cache_dir or default_cache_dir(), size_limit=None)
    rows = []
    try:
        for rank in sorted(args.ranks, reverse=True):
            result = run_svd(args.base, args.tuned, cache, rank=rank, cache_rank=max(args.ranks))
            rows.append(
                {
                    "rank": rank,
                    "total_energy": result.summary["total_energy"],
                    "mean_energy": result.summary["mean_energy"],
                    "adapter_parameters": result.summary["adapter_parameters"],
                    "svd_calls": result.cache["misses"],
                }
            )
    except SvdloraError as exc:
        print(f"Error: {exc.message}\nHint: {exc.hint}", file=sys.stderr)
        return 1
    finally:
        cache.close()
    print(json.dumps(sorted(rows, key=lambda r: r["rank"]), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
