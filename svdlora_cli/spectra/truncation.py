"""What a rank-r truncation keeps, from a spectrum alone, and the `svd` summaries over modules.

No torch here: the full `svd` path and the warm path that re-truncates cached spectra at
another rank (workflows/svd_rerank.py) compute every rank-dependent figure with these same
functions, from the same float64 squares of the same float32 singular values, so both
write the same numbers to the last bit.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

Row = Mapping[str, Any]  # one module's record, as ModuleSpectrum.to_dict() writes it


def captured_energy(squares: Sequence[float], fro_sq: float, complete: bool) -> list[float]:
    """Entry r is the squared Frobenius norm held by the rank-r truncation (float64), from
    the squared singular values in order.

    With a complete spectrum it is ||dW||**2 minus the exact tail sum(S[r:]**2), which
    avoids cancellation when the tail is tiny; otherwise the running sum.
    """
    running = [0.0]
    for value in squares:
        running.append(running[-1] + value)
    if not complete:
        return running
    total = running[-1]
    return [fro_sq - (total - head) for head in running]


def truncation_energy(captured: Sequence[float], fro_sq: float, rank: int) -> tuple[float, float]:
    """(energy share, relative Frobenius error) of the rank-r truncation; rel_error**2 =
    1 - energy (Eckart-Young-Mirsky). A zero delta keeps everything."""
    if fro_sq <= 0.0:
        return 1.0, 0.0
    rank = min(rank, len(captured) - 1)
    rel_sq = min(1.0, max(0.0, fro_sq - captured[rank]) / fro_sq)
    return 1.0 - rel_sq, math.sqrt(rel_sq)


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def spectrum_summary(rows: Sequence[Row]) -> dict[str, Any]:
    """Means, extremes and energy totals over module rows."""
    captured = sum(m["energy"] * m["delta_norm"] ** 2 for m in rows)
    total = sum(m["delta_norm"] ** 2 for m in rows)
    effective = [m["effective_rank"] for m in rows if m["effective_rank"] is not None]
    return {
        "count": len(rows),
        "mean_energy": _mean([m["energy"] for m in rows]),
        "min_energy": min(m["energy"] for m in rows) if rows else None,
        "total_energy": captured / total if total > 0 else 1.0,
        "mean_rel_error": _mean([m["rel_error"] for m in rows]),
        "mean_rank": _mean([m["rank"] for m in rows]),
        "mean_effective_rank": _mean(effective),
        "mean_stable_rank": _mean([m["stable_rank"] for m in rows]),
        "mean_rank_90": _mean([m["rank_90"] for m in rows if m["rank_90"] is not None]),
        "randomized_modules": sum(m["method"] == "randomized" for m in rows),
        "worst_energy_gap": max((m["energy_gap_bound"] for m in rows), default=0.0),
        "max_power_iterations": max((m["power_iterations"] for m in rows), default=0),
    }


def grouped(rows: Sequence[Row], key: str) -> dict[str, dict[str, Any]]:
    """`spectrum_summary` per value of one row field (module type, group)."""
    groups: dict[str, list[Row]] = {}
    for m in rows:
        groups.setdefault(str(m[key]), []).append(m)
    return {label: spectrum_summary(members) for label, members in groups.items()}


def truncation_summary(rows: Sequence[Row], fixed_rank: bool) -> dict[str, Any]:
    """Every summary figure that depends on the modules' ranks (the rest of `svd`'s summary
    comes from the deltas); `fixed_rank`: one --rank for all (else a rank_pattern)."""
    return {
        **spectrum_summary(rows),
        "by_module_type": grouped(rows, "module_type"),
        "by_group": grouped(rows, "group"),
        "adapter_parameters": sum(m["rank"] * sum(m["shape"]) for m in rows),
        "rank_pattern": None if fixed_rank else {m["name"]: m["rank"] for m in rows},
    }


def clamp_warning(rank: int, clamped: Sequence[str]) -> str:
    """The warning for a rank beyond min(out, in) of some modules (`svd` and `train`)."""
    return (
        f"rank {rank} exceeds min(out, in) of {len(clamped)} module(s) "
        f"(e.g. {clamped[0]}); clamped to their full rank"
    )


def zero_delta_warning(zero: Sequence[str]) -> str:
    """The warning for targets whose dW is exactly zero (`svd` and `train --init svd`)."""
    return f"{len(zero)} target(s) did not change at all (dW = 0), e.g. {zero[0]}"


def truncation_warnings(rows: Sequence[Row], wanted: int) -> list[str]:
    """`svd`'s last warnings, in order: the rank clamped to min(out, in) of some modules
    (`wanted`: --rank, or --max-rank with --energy), then the targets with dW = 0."""
    out = []
    clamped = [m["name"] for m in rows if wanted > min(m["shape"])]
    if clamped:
        out.append(clamp_warning(wanted, clamped))
    zero = [m["name"] for m in rows if m["zero_delta"]]
    if zero:
        out.append(zero_delta_warning(zero))
    return out
