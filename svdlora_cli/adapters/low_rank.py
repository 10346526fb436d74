"""An adapter's deltas kept as low-rank factors, and their distance without dense products.

`LazyDeltas` maps each module to its delta left @ right, formed only when asked; the delta
check (checks.py) compares two low-rank deltas with `low_rank_gap`, in O((out + in) r^2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .factors import as_array, read_peft_adapter

if TYPE_CHECKING:  # no torch at import: the warm `svd` path measures gaps of numpy arrays
    import torch


class LazyDeltas(Mapping[str, "torch.Tensor"]):
    """module -> its dense delta left @ right, formed from the module's factors when asked,
    so a model's deltas never exist all at once (a 0.5B model's would take 1.4 GB in fp32).
    `low_rank` gives the factors themselves: the delta check compares them without forming
    the product (`low_rank_gap`)."""

    def __init__(
        self, factors: Mapping[str, Any], form: Callable[[Any], tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        self._factors = factors
        self._form = form

    def low_rank(self, module: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(left (out, r), right (r, in)) with the module's delta = left @ right."""
        return self._form(self._factors[module])

    def __getitem__(self, module: str) -> torch.Tensor:
        left, right = self.low_rank(module)
        return left.float() @ right.float()

    def __iter__(self) -> Iterator[str]:
        return iter(self._factors)

    def __len__(self) -> int:
        return len(self._factors)


def file_deltas(adapter: str | Path) -> LazyDeltas:
    """Each module's scale * B @ A as this package reads the adapter file (formed lazily)."""
    return LazyDeltas(read_peft_adapter(adapter), lambda w: (w.scale * w.B.float(), w.A.float()))


def low_rank_gap(
    left: Any, right: Any, other_left: Any, other_right: Any
) -> tuple[float, float, float]:
    """(||L R - L' R'||_F, ||L R||_F, ||L' R'||_F) without forming either product.

    ||L R - L' R'||^2 = tr(L^T L R R^T) + tr(L'^T L' R' R'^T) - 2 tr(L^T L' R' R^T): r x r
    Gram products in float64, O((out + in) r^2) instead of O(out in r). Their rounding
    (about 1e-16 of the squared norms) resolves a relative gap down to about 1e-8, far
    below the checks' tolerance. Tensors (PEFT's parameters) or numpy arrays alike.
    """
    l1, r1, l2, r2 = (_wide(x) for x in (left, right, other_left, other_right))
    mine = float(((l1.T @ l1) * (r1 @ r1.T)).sum())
    theirs = float(((l2.T @ l2) * (r2 @ r2.T)).sum())
    cross = float(((l1.T @ l2) * (r1 @ r2.T)).sum())
    return math.sqrt(max(mine + theirs - 2.0 * cross, 0.0)), math.sqrt(mine), math.sqrt(theirs)


def _wide(x: Any) -> np.ndarray:
    """A float64 numpy copy of a tensor (widened by torch: numpy has no bfloat16) or array."""
    if hasattr(x, "detach"):
        x = x.detach().double()
    return as_array(x).astype(np.float64, copy=False)
