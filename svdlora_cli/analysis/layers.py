"""The seed's per-layer analysis: where dW is large, and where it is low rank.

Rows come from the cached decompositions and delta statistics; aggregates by
module type, depth and attention vs MLP are computed from the rows, so they
always agree with them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..distributed import missing_warning, work_group
from ..models.checkpoints import TensorReader, open_pair
from ..models.targets import describe
from ..spectra.svd_step import SvdResult, SvdScope
from ..store.cache import ArtifactCache, tensor_key

SORT_KEYS = (
    "layer",
    "name",
    "delta_norm",
    "rel_change",
    "energy",
    "rank_90",
    "effective_rank",
    "share",
)


def module_rows(result: SvdResult) -> list[dict[str, Any]]:
    """One row per target: size of dW, how much of it rank r keeps, and its rank measures."""
    deltas = {d.name: d for d in result.target_deltas}
    total_sq = sum(d.delta_sq for d in result.target_deltas) + sum(
        d.delta_sq for d in result.untargeted
    )
    rows = []
    for m in result.modules:
        d = deltas[m.tensor]
        rows.append(
            {
                "name": m.name,
                "module_type": m.module_type,
                "group": m.group,
                "layer": m.layer,
                "shape": m.shape,
                "delta_norm": d.delta_norm,
                "base_norm": d.base_norm,
                "rel_change": d.rel_change,
                "energy": m.energy,
                "rank_90": m.rank_90,
                "rank_95": m.rank_95,
                "rank_99": m.rank_99,
                "effective_rank": m.effective_rank,
                "stable_rank": m.stable_rank,
                "share": d.delta_sq / total_sq if total_sq > 0 else 0.0,
            }
        )
    return rows


def _mean(values: Sequence[float | None]) -> float | None:
    known = [float(v) for v in values if v is not None]
    return statistics.fmean(known) if known else None


def aggregate(
    rows: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], Any]
) -> dict[str, dict[str, Any]]:
    """Group rows; norms add in squares, energy is ||dW||^2-weighted, rank measures are means."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(key(row)), []).append(row)
    out = {}
    for label, items in groups.items():
        delta_sq = sum(r["delta_norm"] ** 2 for r in items)
        base_sq = sum(r["base_norm"] ** 2 for r in items)
        out[label] = {
            "count": len(items),
            "delta_norm": math.sqrt(delta_sq),
            "rel_change": math.sqrt(delta_sq / base_sq) if base_sq > 0 else 0.0,
            "energy": sum(r["energy"] * r["delta_norm"] ** 2 for r in items) / delta_sq
            if delta_sq > 0
            else 1.0,
            "mean_rank_90": _mean([r["rank_90"] for r in items]),
            "mean_rank_95": _mean([r["rank_95"] for r in items]),
            "mean_rank_99": _mean([r["rank_99"] for r in items]),
            "mean_effective_rank": _mean([r["effective_rank"] for r in items]),
            "mean_stable_rank": _mean([r["stable_rank"] for r in items]),
            "share": sum(r["share"] for r in items),
        }
        if any("intruders" in r for r in items):
            out[label]["intruders"] = sum(r.get("intruders") or 0 for r in items)
    return out


def intruder_count(base: torch.Tensor, tuned: torch.Tensor, k: int, threshold: float) -> int:
    """Top-k left singular vectors of W_tuned whose max |cos| with every singular vector of
    W_base is below `threshold` (intruder dimensions, Shuttleworth et al. 2024)."""
    u_base = torch.linalg.svd(base.float(), full_matrices=False).U
    u_tuned = torch.linalg.svd(tuned.float(), full_matrices=False).U[:, :k]
    cosines = (u_base.T @ u_tuned).abs().max(dim=0).values
    return int((cosines < threshold).sum())


def attach_intruders(
    rows: list[dict[str, Any]],
    base_model: str,
    tuned_model: str,
    cache: ArtifactCache,
    k: int,
    threshold: float,
    progress: Callable[[str, int, int], None] | None = None,
) -> int:
    """Add `intruders` to each row (two full SVDs per module, cached per tensor, split
    across the processes of a launch); returns how many other ranks' results were missing."""
    pair = open_pair(base_model, tuned_model, cache.memo, with_fingerprints=cache.enabled)

    def key_for(name: str) -> str:
        return tensor_key("intruders", pair.fingerprints(), name, k=k, threshold=threshold)

    def compute(names: Sequence[str]) -> dict[str, int]:
        counts = {}
        with TensorReader(pair.base) as base_reader, TensorReader(pair.tuned) as tuned_reader:
            for i, name in enumerate(names):
                if progress:
                    progress(name, i + 1, len(names))
                target = describe(name, pair.base.tensors[name].shape, pair.base.model_type)
                base, tuned = base_reader.get(name), tuned_reader.get(name)
                if target.transposed:
                    base, tuned = base.T, tuned.T
                counts[name] = intruder_count(base, tuned, k, threshold)
                cache.put_json(key_for(name), counts[name], tensor=name)
        return counts

    def cost(name: str) -> float:
        m, n = pair.base.tensors[name].shape
        return 2.0 * m * n * min(m, n)

    names = [f"{row['name']}.weight" for row in rows]
    counts = {n: c for n in names if (c := cache.get_json(key_for(n))) is not None}
    with work_group(cache.enabled) as group:
        computed, late = group.run(
            [n for n in names if n not in counts],
            str,
            cost,
            compute,
            lambda n: cache.get_json(key_for(n)),
        )
    counts.update(computed)
    for row, name in zip(rows, names, strict=True):
        row["intruders"] = int(counts[name])
    return late


def layer_report(
    base_model: str,
    tuned_model: str,
    cache: ArtifactCache,
    scope: SvdScope | None = None,
    rank: int = 16,
    sort: str = "layer",
    intruders: bool = False,
    intruder_k: int = 10,
    intruder_threshold: float = 0.5,
) -> dict[str, Any]:
    """Per-module rows and their aggregates by type, depth and attention vs MLP, from the
    rank-`rank` SVD in `scope` (targets, method, dtype policy, progress)."""
    from ..errors import InvalidOptionError

    if sort not in SORT_KEYS:
        raise InvalidOptionError(f"unknown --sort {sort!r}", f"use one of: {', '.join(SORT_KEYS)}")
    if not 0 < intruder_threshold <= 1 or intruder_k < 1:
        raise InvalidOptionError(
            "--intruder-threshold must be in (0, 1] and --intruder-k >= 1", "e.g. 0.5 and 10"
        )
    scope = scope or SvdScope()
    result = scope.run(base_model, tuned_model, cache, rank=rank)
    rows = module_rows(result)
    warnings = list(result.warnings)
    if intruders:
        late = attach_intruders(
            rows, base_model, tuned_model, cache, intruder_k, intruder_threshold, scope.progress
        )
        if late:
            warnings.append(missing_warning(late, "intruder count(s)", cache.directory))
    descending = sort not in ("layer", "name")
    rows.sort(
        key=lambda r: (
            r[sort] is None,
            -(r[sort] or 0) if descending else (r[sort] if r[sort] is not None else -1),
            r["name"],
        )
    )
    return {
        "rank": rank,
        "sort": sort,
        "modules": rows,
        "by_module_type": aggregate(rows, lambda r: r["module_type"]),
        "by_layer": aggregate(rows, lambda r: r["layer"]),
        "by_group": aggregate(rows, lambda r: r["group"]),
        "untargeted_share": 1.0 - sum(r["share"] for r in rows) if rows else 0.0,
        "intruders": {"k": intruder_k, "threshold": intruder_threshold} if intruders else None,
        "cache": result.cache,
        "dtypes": result.dtypes,
        "fingerprints": result.fingerprints,
        "warnings": warnings,
    }
