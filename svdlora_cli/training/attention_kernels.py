"""The attention kernels of packed rows, fastest first, and the rows they attend within.

- `flash_attn`: flash-attention's `flash_attn_varlen_func` (CUDA, bf16/fp16, when the
  flash-attn package is installed);
- `varlen`: PyTorch's own `torch.nn.attention.varlen.varlen_attn` (CUDA, bf16/fp16,
  torch >= 2.10);
- `sdpa_rows`: one scaled-dot-product call per row (everywhere; the CPU's only choice).

Each takes q, k, v as [1, heads, tokens, dim] and returns [1, tokens, heads, dim], as
transformers' attention functions do (`packing.packed_attention` calls them). The per-row
kernel splits by host integers and the variable-length ones take `cu_seqlens` on the
device, so none reads a tensor back to the host.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PackedRows:
    """The rows of one packed sequence: host lengths for splitting, device bounds for
    variable-length kernels, and the kernel that attends within them."""

    lengths: tuple[int, ...]
    cu_seqlens: torch.Tensor  # int32 [rows + 1]: 0, len_0, len_0 + len_1, ...
    kernel: str = "sdpa_rows"

    @property
    def max_length(self) -> int:
        return max(self.lengths, default=0)

    def to(self, device: torch.device, non_blocking: bool = False) -> PackedRows:
        bounds = self.cu_seqlens.to(device, non_blocking=non_blocking)
        return dataclasses.replace(self, cu_seqlens=bounds)


def sdpa_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: PackedRows, scale: Any):
    # split (not slicing): its backward is one concatenation of the rows' gradients,
    # where each slice's backward would zero-fill and copy a whole-sequence tensor.
    gqa = q.shape[1] != k.shape[1]
    parts = [
        F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=scale, enable_gqa=gqa)
        for qi, ki, vi in zip(
            q.split(rows.lengths, dim=2),
            k.split(rows.lengths, dim=2),
            v.split(rows.lengths, dim=2),
            strict=True,
        )
    ]
    return torch.cat([part.transpose(1, 2) for part in parts], dim=1)  # contiguous


@cache
def _varlen() -> tuple[Callable[..., torch.Tensor], dict[str, Any], bool] | None:
    """torch's varlen_attn with its causal keyword (it changed in torch 2.11), or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    return varlen_attn, causal, "enable_gqa" in params


@cache
def _flash_attn() -> Callable[..., torch.Tensor] | None:
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


def _tokens_first(x: torch.Tensor) -> torch.Tensor:
    """[1, heads, tokens, dim] -> [tokens, heads, dim], the variable-length layout."""
    return x[0].transpose(0, 1).contiguous()


def _autocast_dtype(*qkv: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, k and v in autocast's dtype while it is on: the variable-length kernels take one
    16-bit dtype, which autocast does not give them (it does SDPA); under the teacher's
    mixed precision the rotary's fp32 cos/sin make q and k fp32 while v is bf16."""
    device = qkv[0].device.type
    if not torch.is_autocast_enabled(device):
        return qkv
    return tuple(x.to(torch.get_autocast_dtype(device)) for x in qkv)


def varlen_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: PackedRows, scale: Any):
    found = _varlen()
    if found is None:
        raise RuntimeError("this torch has no torch.nn.attention.varlen")
    varlen_attn, causal, has_gqa = found
    q, k, v = _autocast_dtype(q, k, v)
    extra = dict(causal)
    if q.shape[1] != k.shape[1]:
        if has_gqa:
            extra["enable_gqa"] = True
        else:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    cu, n = rows.cu_seqlens, rows.max_length
    out = varlen_attn(
        _tokens_first(q), _tokens_first(k), _tokens_first(v), cu, cu, n, n, scale=scale, **extra
    )
    return out.unsqueeze(0)


def flash_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: PackedRows, scale: Any):
    flash = _flash_attn()
    if flash is None:
        raise RuntimeError("flash-attn is not installed")
    q, k, v = (_tokens_first(x) for x in _autocast_dtype(q, k, v))
    cu, n = rows.cu_seqlens, rows.max_length
    return flash(q, k, v, cu, cu, n, n, softmax_scale=scale, causal=True).unsqueeze(0)


KERNEL_FUNCTIONS = {"flash_attn": flash_rows, "varlen": varlen_rows, "sdpa_rows": sdpa_rows}


def kernel_candidates(device: torch.device, low_precision: bool) -> list[str]:
    """The kernels worth trying on this device, fastest first."""
    names = []
    if device.type == "cuda" and low_precision:
        names += ["flash_attn"] if _flash_attn() is not None else []
        names += ["varlen"] if _varlen() is not None else []
    return [*names, "sdpa_rows"]


def head_shape(config: Any) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) of a transformers config (a multimodal
    one's text model)."""
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return heads, kv_heads, head_dim
