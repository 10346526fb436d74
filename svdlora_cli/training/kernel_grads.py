"""The gradients of a packed-attention kernel against the per-row SDPA, before training.

The kernel check in `packing` compares a variable-length kernel's packed loss with the
padded loss: a forward pass only. A kernel whose backward is wrong (or missing for this
dtype) would then train on wrong gradients, or fail at the first step. This check runs
the kernel's backward once on random q, k and v with the model's head counts, over
rows of uneven length, and compares dq, dk and dv with the per-row SDPA's in fp32. It
touches no parameter of the model (no gradient hooks of DDP or FSDP run).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .attention_kernels import KERNEL_FUNCTIONS, PackedRows, head_shape, sdpa_rows

# Relative error of a gradient's norm that a 16-bit kernel may show against fp32 (bf16
# keeps 8 bits: about 1e-2 on these sizes); a wrong mask or a dropped term gives O(1).
GRADIENT_TOLERANCE = 5e-2
ROWS = (5, 11, 3)


def gradient_disagreement(
    attend: Callable[..., torch.Tensor],
    reference: Callable[..., torch.Tensor],
    rows: PackedRows,
    heads: tuple[int, int, int],
    device: torch.device,
    dtype: torch.dtype,
) -> str | None:
    """Why `attend`'s gradients are not to be trusted, or None when they agree with
    `reference` (the per-row SDPA, run in fp32 without autocast). `rows` are ROWS packed on
    `device`; `attend` runs in `dtype`, under whatever autocast is on."""
    n_heads, n_kv, head_dim = heads
    tokens = sum(ROWS)
    gen = torch.Generator().manual_seed(0)
    shapes = [(1, n_heads, tokens, head_dim), *[(1, n_kv, tokens, head_dim)] * 2]
    inputs = [torch.randn(shape, generator=gen).to(device) for shape in shapes]
    weights = torch.randn(1, tokens, n_heads, head_dim, generator=gen).to(device)

    def grads(fn: Callable[..., torch.Tensor], kind: torch.dtype) -> list[torch.Tensor]:
        leaves = [x.to(kind, copy=True).requires_grad_() for x in inputs]  # fresh leaves
        with torch.enable_grad():
            (fn(*leaves, rows, None).float() * weights).sum().backward()
        return [leaf.grad.float() for leaf in leaves]  # type: ignore[union-attr]

    got = grads(attend, dtype)
    with torch.autocast(device.type, enabled=False):
        want = grads(reference, torch.float32)
    for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        error = float((g - w).norm() / w.norm().clamp_min(1e-12))
        if not error <= GRADIENT_TOLERANCE:  # NaN included
            return f"its {name} differs from the per-row SDPA's by {error:.3g} (relative)"
    return None


def kernel_gradients_wrong(kernel: str, config: Any, device: torch.device) -> str | None:
    """`gradient_disagreement` of one of the packed kernels (None for the per-row SDPA,
    the reference itself), in autocast's dtype when it is on, else fp32."""
    if kernel == "sdpa_rows":
        return None
    bounds = torch.tensor([0, *ROWS], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    rows = PackedRows(ROWS, bounds.to(device), kernel)
    on = torch.is_autocast_enabled(device.type)
    dtype = torch.get_autocast_dtype(device.type) if on else torch.float32
    attend = KERNEL_FUNCTIONS[kernel]
    return gradient_disagreement(attend, sdpa_rows, rows, head_shape(config), device, dtype)
