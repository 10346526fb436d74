"""Mixed precision: base and teacher weights stored in different dtypes.

A fine-tune starts from the base as loaded in the fine-tune's own dtype. With an fp32
base and a bf16 teacher, W_teacher - W_base therefore holds the base's rounding to
bf16 as well as the change: bf16 keeps 8 significant bits (relative spacing 2^-8 to
2^-7), while fine-tunes typically move weights by about 1e-3, so the rounding can
dominate dW and flatten its spectrum. The `round` policy subtracts against the base
cast to the teacher's dtype, the grid the fine-tune started from, which removes that
rounding. When the base is the coarser one (bf16 base, fp32 teacher) the cast is
exact and changes nothing: the teacher started from those very values, and rounding
the teacher instead would erase every change finer than the base's grid. `raw`
subtracts the weights as stored.

The rounding's share, ||cast(W_base) - W_base||^2 / ||W_teacher - W_base||^2 summed
over the targets, says how much of the raw difference is representation error.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InvalidOptionError
from ..models.quantized import loaded_dtype
from .decompose import sum_squares

if TYPE_CHECKING:
    from ..models.checkpoints import ModelPair

DTYPE_POLICIES = ("round", "raw")
DEFAULT_DTYPE_POLICY = "round"


def check_policy(policy: str) -> None:
    if policy not in DTYPE_POLICIES:
        raise InvalidOptionError(
            f"unknown --dtype-policy {policy!r}", f"use one of: {', '.join(DTYPE_POLICIES)}"
        )


def base_for_delta(base: torch.Tensor, tuned: torch.Tensor, policy: str) -> torch.Tensor:
    """The base on the grid the subtraction uses: the teacher's dtype under `round`."""
    if policy == "round" and base.dtype != tuned.dtype and tuned.is_floating_point():
        return base.to(tuned.dtype)
    return base


def rounding_sums(base: torch.Tensor, tuned: torch.Tensor) -> tuple[float, float]:
    """(||cast(W_base) - W_base||^2, ||W_teacher - W_base||^2) in fp32 over one block."""
    if base.dtype == tuned.dtype or not tuned.is_floating_point():
        return 0.0, 0.0
    b = base.reshape(-1).to(torch.float32)
    r = base.reshape(-1).to(tuned.dtype).to(torch.float32) - b
    d = tuned.reshape(-1).to(torch.float32) - b
    return sum_squares(r), sum_squares(d)


def dtype_summary(pair: ModelPair, names: Sequence[str], stats: Any, policy: str) -> dict:
    """Stored dtypes of the targets on each side, the policy and the rounding's share.

    A target is mixed when the dtypes it loads in differ (FP8 loads in the model's dtype).

    `stats` maps a tensor name to its statistics (or record) with `rounding_sq` and
    `raw_delta_sq`; both are 0 for a tensor stored in the same dtype on both sides.
    """
    base = Counter(pair.base.tensors[n].dtype for n in names)
    teacher = Counter(pair.tuned.tensors[n].dtype for n in names)
    mixed = sum(loaded_dtype(pair.base, n) != loaded_dtype(pair.tuned, n) for n in names)
    rounding = sum(_get(stats[n], "rounding_sq") for n in names)
    raw = sum(_get(stats[n], "raw_delta_sq") for n in names)
    quantized = {
        side: ckpt.quantization.describe()
        for side, ckpt in (("base", pair.base), ("teacher", pair.tuned))
        if ckpt.quantization is not None
    }
    return {
        "base": dict(sorted(base.items())),
        "teacher": dict(sorted(teacher.items())),
        "mixed_targets": mixed,
        "policy": policy,
        "rounding_share": rounding / raw if raw > 0 else 0.0,
        "quantized": quantized or None,
    }


def _get(row: Any, key: str) -> float:
    value = row.get(key, 0.0) if isinstance(row, dict) else getattr(row, key, 0.0)
    return float(value or 0.0)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{dtype} x{n}" for dtype, n in counts.items())


def dtype_warnings(summary: dict, targets: int) -> list[str]:
    """The run's one mixed-precision warning and, for FP8 checkpoints, one about quantization."""
    out = []
    if summary["mixed_targets"]:
        share = summary["rounding_share"]
        head = (
            f"base and teacher dtypes differ in {summary['mixed_targets']} of {targets} targets "
            f"(base {_counts(summary['base'])}; teacher {_counts(summary['teacher'])}); "
            f"rounding the base to the teacher's dtype is {share:.1%} of raw ||dW||^2"
        )
        if summary["policy"] == "round":
            out.append(
                f"{head}; dW is taken against the rounded base (--dtype-policy round); "
                "changes finer than the teacher's dtype can resolve are lost either way"
            )
        else:
            out.append(
                f"{head}, and is included in dW (--dtype-policy raw; "
                "--dtype-policy round removes it)"
            )
    for side, how in (summary.get("quantized") or {}).items():
        out.append(
            f"the {side} model is FP8-quantized: {how}; dW includes its quantization error, "
            "which can exceed a fine-tune's change"
        )
    return out
