"""The seed's rank study: energy and error against rank from one cached decomposition,
and optionally an SVD-init student per rank against a random one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidOptionError
from ..spectra.svd_step import SvdScope
from ..store.cache import DEFAULT_CACHE_RANK, ArtifactCache


def parse_ranks(text: str) -> list[int]:
    """`4,8,16` -> [4, 8, 16]; every rank positive."""
    try:
        ranks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError as exc:
        raise InvalidOptionError(
            f"--ranks {text!r} is not a list of integers", "use e.g. --ranks 4,8,16,32"
        ) from exc
    if not ranks or ranks[0] <= 0:
        raise InvalidOptionError(
            f"--ranks {text!r} needs positive ranks", "use e.g. --ranks 4,8,16,32"
        )
    return ranks


def rank_sweep(
    base_model: str,
    tuned_model: str,
    cache: ArtifactCache,
    ranks: Sequence[int],
    scope: SvdScope | None = None,
) -> dict[str, Any]:
    """Energy and error per rank, overall and per module type, each rank's SVD in `scope`
    (targets, method, dtype policy, progress). The largest rank is decomposed first and
    cached with K >= every rank, so each other rank is a slice (no new SVD)."""
    scope = scope or SvdScope()
    keep = max(max(ranks), DEFAULT_CACHE_RANK)
    rows, hits, misses, warnings, dtypes = [], 0, 0, [], None
    for rank in sorted(ranks, reverse=True):
        result = scope.run(base_model, tuned_model, cache, rank=rank, cache_rank=keep)
        dtypes = result.dtypes
        hits, misses = hits + result.cache["hits"], misses + result.cache["misses"]
        warnings += [w for w in result.warnings if w not in warnings]
        s = result.summary
        rows.append(
            {
                "rank": rank,
                "total_energy": s["total_energy"],
                "mean_energy": s["mean_energy"],
                "min_energy": s["min_energy"],
                "mean_rel_error": s["mean_rel_error"],
                "adapter_parameters": s["adapter_parameters"],
                "by_module_type": {
                    k: {"total_energy": v["total_energy"], "mean_rel_error": v["mean_rel_error"]}
                    for k, v in s["by_module_type"].items()
                },
                "factors": result,
            }
        )
    rows.sort(key=lambda r: r["rank"])
    if not cache.enabled:
        warnings.append("with --no-cache every rank is decomposed again")
    return {
        "ranks": rows,
        "cache": {"hits": hits, "misses": misses},
        "dtypes": dtypes,
        "warnings": warnings,
    }


def train_rank_study(
    base_model: str,
    sweep: dict[str, Any],
    output_dir: Path,
    config: Any,
    data_path: str | None,
    eval_path: str | None,
    progress_factory: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """One SVD-init student per rank and one random student at the largest rank."""
    import contextlib

    from ..training.shared import SharedSetup
    from ..training.student import base_plan, train_student

    shared = SharedSetup(base_model, config.trust_remote_code)

    def run(name: str, init: str, rank: int, factors: Any, folder: Path) -> dict[str, Any]:
        plan = base_plan(base_model, rank, None, factors=factors)
        context = progress_factory(name) if progress_factory else contextlib.nullcontext(None)
        with context as update:
            return train_student(
                base_model,
                init,
                folder,
                config,
                plan,
                factors,
                "svd" if init == "svd" else init,
                data_path,
                eval_path,
                progress=update,
                shared=shared,
            )

    study = []
    for row in sweep["ranks"]:
        factors = row["factors"].factors("b")
        arm = run(
            f"svd r={row['rank']}", "svd", row["rank"], factors, output_dir / f"rank_{row['rank']}"
        )
        study.append(
            {"rank": row["rank"], **{k: arm[k] for k in _ARM_KEYS}, "artifacts": arm["artifacts"]}
        )
    largest = sweep["ranks"][-1]
    random = run(
        f"random r={largest['rank']}",
        "random",
        largest["rank"],
        largest["factors"].factors("b"),
        output_dir / "random",
    )
    return {
        "svd": study,
        "random": {
            "rank": largest["rank"],
            **{k: random[k] for k in _ARM_KEYS},
            "artifacts": random["artifacts"],
        },
    }


_ARM_KEYS = (
    "initial_loss",
    "final_loss",
    "min_loss",
    "initial_eval_loss",
    "final_eval_loss",
    "tokens_per_s",
)
