"""Streamed weight deltas dW = W_tuned - W_base, their statistics and the `delta` step."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from ..distributed import missing_warning, work_group
from ..errors import NonFiniteDeltaError, SvdloraError
from ..models.checkpoints import ModelPair, open_pair
from ..models.quantized import check_targets_readable, reads_float
from ..models.targets import Target, describe, select_targets, untargeted_kind
from ..store.cache import ArtifactCache, tensor_key
from .decompose import sum_squares
from .dtype_policy import (
    DEFAULT_DTYPE_POLICY,
    base_for_delta,
    check_policy,
    dtype_summary,
    dtype_warnings,
    rounding_sums,
)

log = logging.getLogger("svdlora")

Progress = Callable[[str, int, int], None]


def delta_matrix(
    name: str,
    base: torch.Tensor,
    tuned: torch.Tensor,
    transposed: bool = False,
    policy: str = DEFAULT_DTYPE_POLICY,
) -> torch.Tensor:
    """fp32 delta in LoRA's (out, in) orientation; NaN/Inf is an error naming the tensor.

    Under the `round` policy a base stored in another dtype is first cast to the
    teacher's (see precision.py)."""
    base = base_for_delta(base, tuned, policy)
    dw = tuned.to(torch.float32) - base.to(torch.float32)
    if not math.isfinite(float(dw.sum())):  # NaN/Inf propagate into the sum: one cheap pass
        bad = int((~torch.isfinite(dw)).sum())
        raise NonFiniteDeltaError(
            f"the delta of {name} has {bad} NaN/Inf value(s)",
            "check both checkpoints load and evaluate normally; a diverged run or a broken "
            "conversion usually causes this",
        )
    return dw.T if transposed else dw


@dataclass
class DeltaRecord:
    """Size of one tensor's change. `delta_sq` is ||dW||_F**2, the unit of energy shares."""

    name: str
    module: str
    module_type: str
    group: str
    layer: int | None
    shape: list[int]
    targeted: bool
    kind: str
    base_norm: float
    delta_norm: float
    rel_change: float
    max_abs: float
    delta_sq: float
    # Mixed dtypes only (else 0): the base's rounding to the teacher's dtype and the raw
    # ||W_teacher - W_base||^2; summarised in the document's `dtypes`, not per row.
    rounding_sq: float = 0.0
    raw_delta_sq: float = 0.0

    @property
    def changed(self) -> bool:
        return self.delta_sq > 0.0

    def to_dict(self) -> dict:
        row = asdict(self)
        del row["rounding_sq"], row["raw_delta_sq"]
        return row


STATS_CHUNK = 1 << 22  # elements per block: bounded memory for embedding-sized tensors


def chunk_stats(
    name: str,
    chunks: Iterable[tuple[torch.Tensor, torch.Tensor]],
    policy: str = DEFAULT_DTYPE_POLICY,
) -> dict[str, float]:
    """||W||_F, ||dW||_F, ||dW||/||W|| and max|dW| over (base, tuned) blocks of one tensor.

    Each block is promoted to fp32 for the difference; its sums of squares are
    accumulated in float64 (`sum_squares`), so an embedding-sized tensor never has to
    exist in fp32 as a whole and the norms are exact to about 1e-12.
    """
    base_sq = delta_sq = max_abs = rounding_sq = raw_sq = 0.0
    for base, tuned in chunks:
        b = base.reshape(-1).to(torch.float32)
        d = delta_matrix(name, _aligned(base, b, tuned, policy), tuned, policy="raw").reshape(-1)
        base_sq += sum_squares(b)
        delta_sq += sum_squares(d)
        max_abs = max(max_abs, float(d.abs().max()) if d.numel() else 0.0)
        rounding, raw = rounding_sums(base, tuned)
        rounding_sq, raw_sq = rounding_sq + rounding, raw_sq + raw
    return _stats(base_sq, delta_sq, max_abs, rounding_sq, raw_sq)


def _aligned(
    base: torch.Tensor, base_fp32: torch.Tensor, tuned: torch.Tensor, policy: str
) -> torch.Tensor:
    """The base to subtract: its fp32 copy, unless the policy casts it to the teacher's dtype."""
    aligned = base_for_delta(base, tuned, policy)
    return base_fp32.reshape(base.shape) if aligned is base else aligned


def _stats(
    base_sq: float, delta_sq: float, max_abs: float, rounding_sq: float, raw_sq: float
) -> dict[str, float]:
    base_norm, delta_norm = math.sqrt(base_sq), math.sqrt(delta_sq)
    rel_change = delta_norm / base_norm if base_norm > 0 else (math.inf if delta_norm else 0.0)
    return {
        "base_norm": base_norm,
        "delta_norm": delta_norm,
        "rel_change": rel_change,
        "max_abs": max_abs,
        "delta_sq": delta_sq,
        "rounding_sq": rounding_sq,
        "raw_delta_sq": raw_sq,
    }


def target_delta(
    name: str,
    base: torch.Tensor,
    tuned: torch.Tensor,
    transposed: bool,
    policy: str = DEFAULT_DTYPE_POLICY,
) -> tuple[torch.Tensor, dict[str, float]]:
    """A target's fp32 dW in (out, in) orientation and its statistics, converting each once."""
    b = base.to(torch.float32)
    dw = delta_matrix(name, _aligned(base, b, tuned, policy), tuned, policy="raw")
    flat_b, flat_d = b.reshape(-1), dw.reshape(-1)
    base_sq, delta_sq = sum_squares(flat_b), sum_squares(flat_d)
    max_abs = float(flat_d.abs().max()) if flat_d.numel() else 0.0
    stats = _stats(base_sq, delta_sq, max_abs, *rounding_sums(base, tuned))
    return (dw.T if transposed else dw), stats


def _record(
    target: Target | None, name: str, shape: Sequence[int], model_type: str, stats: dict
) -> DeltaRecord:
    info = target or describe(name, shape if len(shape) == 2 else (*shape, 1)[:2], model_type)
    return DeltaRecord(
        name=name,
        module=info.module,
        module_type=info.module_type,
        group=info.group,
        layer=info.layer,
        shape=list(shape),
        targeted=target is not None,
        kind="target" if target is not None else untargeted_kind(name, shape),
        **{k: stats.get(k, 0.0) for k in _STAT_FIELDS},
    )


_STAT_FIELDS = (
    "base_norm",
    "delta_norm",
    "rel_change",
    "max_abs",
    "delta_sq",
    "rounding_sq",
    "raw_delta_sq",
)


def stats_key(pair: ModelPair, name: str, policy: str = DEFAULT_DTYPE_POLICY) -> str:
    return tensor_key("delta-stats", pair.fingerprints(), name, dtype_policy=policy)


def _tensor_stats(
    pair: ModelPair,
    names: Sequence[str],
    cache: ArtifactCache,
    progress: Progress | None,
    policy: str = DEFAULT_DTYPE_POLICY,
) -> dict[str, dict]:
    """Change statistics of each named tensor, read in blocks, each written to the cache."""
    found = {}
    for i, (name, chunks) in enumerate(pair.iter_chunks(names, STATS_CHUNK)):
        if progress:
            progress(name, i + 1, len(names))
        if not (reads_float(pair.base, name) and reads_float(pair.tuned, name)):
            blocks = list(chunks)
            base, tuned = (torch.cat([c[j].reshape(-1) for c in blocks]) for j in (0, 1))
            stats = {
                "base_norm": 0.0,
                "delta_norm": 0.0,
                "rel_change": 0.0,
                "max_abs": 0.0,
                "delta_sq": 0.0,
            }
            if not torch.equal(base, tuned):
                stats["max_abs"] = math.nan
        else:
            stats = chunk_stats(name, chunks, policy)
        cache.put_json(stats_key(pair, name, policy), stats, tensor=name)
        found[name] = stats
    return found


def collect_deltas(
    pair: ModelPair,
    targets: Sequence[Target],
    untargeted: Sequence[str],
    cache: ArtifactCache,
    progress: Progress | None = None,
    known: dict[str, dict] | None = None,
    policy: str = DEFAULT_DTYPE_POLICY,
) -> tuple[list[DeltaRecord], list[DeltaRecord]]:
    """Statistics of every target and untargeted tensor; `known` and the cache skip reads."""
    by_name: dict[str, Target | None] = {t.tensor: t for t in targets}
    by_name.update(dict.fromkeys(untargeted))
    order = [n for n in pair.names if n in by_name]
    found: dict[str, dict] = dict(known or {})
    todo = []
    for name in order:
        cached = found.get(name) or cache.get_json(stats_key(pair, name, policy))
        if cached is None:
            todo.append(name)
        else:
            found[name] = cached
    with work_group(cache.enabled) as group:
        computed, late = group.run(
            todo,
            key=str,
            cost=lambda n: pair.base.tensors[n].nbytes,
            compute=lambda names: _tensor_stats(pair, names, cache, progress, policy),
            fetch=lambda n: cache.get_json(stats_key(pair, n, policy)),
        )
    found.update(computed)
    if late:
        log.warning(missing_warning(late, "statistics", cache.directory))
    model_type = pair.base.model_type
    records = [
        _record(by_name[n], n, pair.base.tensors[n].shape, model_type, found[n]) for n in order
    ]
    return [r for r in records if r.targeted], [r for r in records if not r.targeted]


def _group_summary(records: Sequence[DeltaRecord], key: str, total_sq: float) -> dict[str, dict]:
    groups: dict[str, list[DeltaRecord]] = {}
    for record in records:
        groups.setdefault(str(getattr(record, key)), []).append(record)
    out = {}
    for label, rows in groups.items():
        delta_sq = sum(r.delta_sq for r in rows)
        base_sq = sum(r.base_norm**2 for r in rows)
        out[label] = {
            "count": len(rows),
            "changed": sum(r.changed for r in rows),
            "delta_norm": math.sqrt(delta_sq),
            "rel_change": math.sqrt(delta_sq / base_sq) if base_sq > 0 else 0.0,
            "mean_rel_change": sum(r.rel_change for r in rows) / len(rows),
            "max_abs": max(r.max_abs for r in rows),
            "share_of_total": delta_sq / total_sq if total_sq > 0 else 0.0,
        }
    return out


def summarize_deltas(modules: Sequence[DeltaRecord], untargeted: Sequence[DeltaRecord]) -> dict:
    """Totals by module type, attention vs MLP, and the untargeted share of ||dW||**2."""
    target_sq = sum(r.delta_sq for r in modules)
    other_sq = sum(r.delta_sq for r in untargeted if math.isfinite(r.delta_sq))
    total_sq = target_sq + other_sq
    return {
        "targets": len(modules),
        "changed_targets": sum(r.changed for r in modules),
        "untargeted_changed": sum(r.changed for r in untargeted),
        "total_delta_norm": math.sqrt(total_sq),
        "targeted_delta_norm": math.sqrt(target_sq),
        "targeted_share": target_sq / total_sq if total_sq > 0 else 0.0,
        "untargeted_share": other_sq / total_sq if total_sq > 0 else 0.0,
        "all_zero": total_sq == 0.0,
        "by_module_type": _group_summary(modules, "module_type", total_sq),
        "by_group": _group_summary(modules, "group", total_sq),
        "untargeted_by_kind": _group_summary(
            [r for r in untargeted if r.changed], "kind", total_sq
        ),
    }


def check_pair_names(pair: ModelPair, targets: Sequence[Target]) -> list[str]:
    """Tensors present in one model only: fatal for a target, a warning otherwise."""
    one_sided = set(pair.only_base) | set(pair.only_tuned)
    for target in targets:
        if target.tensor in one_sided:
            side = "base" if target.tensor in pair.only_base else "tuned"
            raise SvdloraError(
                f"target tensor {target.tensor} exists only in the {side} model",
                "both checkpoints must hold every targeted weight; "
                "check they are the same architecture",
            )
    return sorted(one_sided)


def pair_targets(
    pair: ModelPair, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> tuple[list[Target], list[str], list[str]]:
    """Targets, untargeted shared tensors, and warnings about one-sided tensors."""
    shapes = {n: pair.base.tensors[n].shape for n in [*pair.names, *pair.only_base]}
    shapes.update({n: pair.tuned.tensors[n].shape for n in pair.only_tuned})
    targets, rest = select_targets(shapes, pair.base.model_type, include, exclude)
    one_sided = check_pair_names(pair, targets)
    check_targets_readable(pair.base, [t.tensor for t in targets], "base")
    check_targets_readable(pair.tuned, [t.tensor for t in targets], "teacher")
    warnings = [c.weights_warning for c in (pair.base, pair.tuned) if c.weights_warning]
    warnings += [f"{n} exists in only one model; it is left out of every figure" for n in one_sided]
    return targets, [n for n in rest if n not in set(one_sided)], warnings


def pair_dtypes(
    pair: ModelPair, records: Sequence[DeltaRecord], policy: str
) -> tuple[dict, list[str]]:
    """The `dtypes` record of the targets and its warnings (one per run for mixed dtypes)."""
    summary = dtype_summary(pair, [r.name for r in records], {r.name: r for r in records}, policy)
    return summary, dtype_warnings(summary, len(records))


@dataclass
class DeltaResult:
    """Per-target and untargeted change statistics with their summaries."""

    modules: list[DeltaRecord]
    untargeted: list[DeltaRecord]
    summary: dict
    fingerprints: dict[str, str | None]
    warnings: list[str] = field(default_factory=list)
    dtypes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "modules": [r.to_dict() for r in self.modules],
            "untargeted": [r.to_dict() for r in self.untargeted if r.changed],
            "summary": self.summary,
            "dtypes": self.dtypes,
            "fingerprints": self.fingerprints,
            "warnings": self.warnings,
        }


def run_delta(
    base_model: str,
    tuned_model: str,
    cache: ArtifactCache,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    progress: Progress | None = None,
    dtype_policy: str = DEFAULT_DTYPE_POLICY,
) -> DeltaResult:
    """Statistics of dW for every target and every other changed tensor."""
    check_policy(dtype_policy)
    pair = open_pair(base_model, tuned_model, cache.memo, with_fingerprints=cache.enabled)
    targets, rest, warnings = pair_targets(pair, include, exclude)
    modules, untargeted = collect_deltas(
        pair, targets, rest, cache, progress=progress, policy=dtype_policy
    )
    summary = summarize_deltas(modules, untargeted)
    dtypes, dtype_notes = pair_dtypes(pair, modules, dtype_policy)
    warnings += dtype_notes
    if summary["all_zero"]:
        warnings.append("base and tuned are identical: every delta is exactly zero")
    return DeltaResult(modules, untargeted, summary, pair.fingerprints(), warnings, dtypes)
