"""Where an adapter sits relative to the teacher: parameter distance and subspace overlap.

The distance is ||dW_teacher - scale * B A||_F over the adapter's modules, as a
fraction of ||dW_teacher||_F. For a rank-r SVD init it equals sqrt(1 - energy)
(Eckart-Young-Mirsky). The overlap is the mean squared cosine of the principal
angles between the adapter's subspace and the teacher's top-r singular subspace
(1: the same directions; r/n: what random directions would give).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch

from ..adapters.factors import AdapterWeights, read_peft_adapter
from ..models.checkpoints import TensorReader, open_pair
from ..models.targets import describe
from ..spectra.delta import delta_matrix
from ..spectra.svd_step import run_svd
from ..store.cache import ArtifactCache


def _overlap(basis: torch.Tensor, teacher: torch.Tensor) -> float | None:
    """Mean cos^2 of principal angles between span(basis) and span(teacher) (columns;
    `teacher` orthonormal, float64)."""
    if basis.abs().max() == 0 or teacher.numel() == 0:
        return None
    q, _ = torch.linalg.qr(basis.double())
    k = min(q.shape[1], teacher.shape[1])
    cosines = torch.linalg.svdvals(teacher.T @ q)[:k]
    return float((cosines**2).mean())


def _distance_sq(dw: torch.Tensor, dw_sq: float, weights: AdapterWeights | None) -> float:
    """||dW - scale * B A||_F**2 in float64 without forming B A: ||dW||**2 minus twice
    scale * <B, dW A^T> plus scale**2 * <B^T B, A A^T> (out x r and r x r products)."""
    if weights is None:
        return dw_sq
    b, a = weights.B.double(), weights.A.double()
    cross = float((b * (dw @ a.T)).sum())
    own = float(((b.T @ b) * (a @ a.T)).sum())
    return max(0.0, dw_sq - 2 * weights.scale * cross + weights.scale**2 * own)


def adapter_geometry(
    base_model: str,
    teacher_model: str,
    adapters: Mapping[str, str | Path],
    cache: ArtifactCache,
) -> dict[str, dict]:
    """Per adapter: overall and per-module-type relative distance to the teacher, and overlaps."""
    loaded = {name: read_peft_adapter(path) for name, path in adapters.items()}
    modules = sorted({m for weights in loaded.values() for m in weights})
    rank = max(w.A.shape[0] for weights in loaded.values() for w in weights.values())
    include = [f"^{m.replace('.', '[.]')}[.]weight$" for m in modules]
    spectra = run_svd(base_model, teacher_model, cache, rank=rank, include=include)
    pair = open_pair(base_model, teacher_model, cache.memo, with_fingerprints=cache.enabled)
    sums: dict[str, dict[str, list[float]]] = {n: {} for n in loaded}
    overlaps: dict[str, dict[str, list[float]]] = {n: {"left": [], "right": []} for n in loaded}
    with TensorReader(pair.base) as base_reader, TensorReader(pair.tuned) as tuned_reader:
        for module in modules:
            name = f"{module}.weight"
            target = describe(name, pair.base.tensors[name].shape, pair.base.model_type)
            base, tuned = base_reader.get(name), tuned_reader.get(name)
            dw = delta_matrix(name, base, tuned, target.transposed).double()
            teacher_sq = float((dw**2).sum())
            U, _, Vh = spectra.truncated[module]
            teacher_bases: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
            for arm, weights in loaded.items():
                w: AdapterWeights | None = weights.get(module)
                diff_sq = _distance_sq(dw, teacher_sq, w)
                for key in ("all", target.module_type):
                    acc = sums[arm].setdefault(key, [0.0, 0.0])
                    acc[0] += diff_sq
                    acc[1] += teacher_sq
                if w is not None:
                    r = w.A.shape[0]
                    if r not in teacher_bases:  # orthonormal columns, as _overlap takes them
                        teacher_bases[r] = (
                            torch.linalg.qr(U[:, :r].double())[0],
                            torch.linalg.qr(Vh[:r].T.double())[0],
                        )
                    left_basis, right_basis = teacher_bases[r]
                    left = _overlap(w.B.float(), left_basis)
                    right = _overlap(w.A.float().T, right_basis)
                    if left is not None:
                        overlaps[arm]["left"].append(left)
                    if right is not None:
                        overlaps[arm]["right"].append(right)
    out = {}
    for arm in loaded:
        fractions = {k: math.sqrt(d / t) if t > 0 else 0.0 for k, (d, t) in sums[arm].items()}
        out[arm] = {
            "distance": math.sqrt(sums[arm]["all"][0]),
            "relative_distance": fractions.pop("all"),
            "relative_distance_by_type": fractions,
            "overlap_left": _mean(overlaps[arm]["left"]),
            "overlap_right": _mean(overlaps[arm]["right"]),
            "teacher_norm": math.sqrt(sums[arm]["all"][1]),
        }
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
