"""PEFT's LoRA linear with the low-rank update added inside one matrix product.

PEFT computes `result + lora_B(lora_A(dropout(x))) * scaling`: after the two small
products it makes two more passes over the (tokens x out) output, one to scale and one
to add, forward and backward. `torch.addmm(result, h, B^T, alpha=scaling)` does the
same in the product's epilogue. On a CPU those passes were a quarter of a LoRA step
(benchmarks/RESULTS.md, issue 16's profile). The same numbers up to float rounding:
a test compares losses and gradients with PEFT's own forward.

Only the plain case is fused: one active adapter, no DoRA or other variant, not
merged, no bias on B, no mixed-adapter batch, and matching dtypes (autocast gives
them); anything else runs PEFT's forward unchanged.
"""

from __future__ import annotations

import types
from typing import Any

import torch


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    names = [n for n in self.active_adapters if n in self.lora_A]
    plain = (
        len(names) == 1
        and not self.disable_adapters
        and not self.merged
        and kwargs.get("adapter_names") is None
        and names[0] not in self.lora_variant
        and self.lora_B[names[0]].bias is None
    )
    if not plain:
        return type(self).forward(self, x, *args, **kwargs)
    self._check_forward_args(x, *args, **kwargs)
    name = names[0]
    result = self.base_layer(x, *args, **kwargs)
    lora_A, lora_B = self.lora_A[name], self.lora_B[name]
    h = lora_A(self.lora_dropout[name](self._cast_input_dtype(x, lora_A.weight.dtype)))
    weight = lora_B.weight
    if torch.is_autocast_enabled(result.device.type):
        dtype = torch.get_autocast_dtype(result.device.type)
        h, weight, result = h.to(dtype), weight.to(dtype), result.to(dtype)
    if not (result.dtype == h.dtype == weight.dtype):
        return result + lora_B(h) * self.scaling[name]
    out = torch.addmm(
        result.reshape(-1, result.shape[-1]),
        h.reshape(-1, h.shape[-1]),
        weight.t(),
        alpha=self.scaling[name],
    )
    return out.view(result.shape)


def fuse(model: Any) -> int:
    """Give every PEFT LoRA Linear under `model` the fused forward; returns how many."""
    from peft.tuners.lora.layer import Linear

    count = 0
    for module in model.modules():
        if type(module) is Linear:
            module.forward = types.MethodType(_fused_forward, module)
            count += 1
    return count
