"""FLOPs of a training step counted from the model's shapes, the device's peak, and MFU.

Convention (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", sec. 2.1;
Chowdhery et al. 2022, PaLM, appendix B; Hoffmann et al. 2022, Chinchilla, appendix F):
a multiply-add is 2 FLOPs, and per token

- a weight of shape (out, in) costs 2*in*out in the forward pass and 2*in*out more for
  the gradient of its input; a trainable weight adds 2*in*out for its own gradient.
  So a frozen weight costs 4*in*out per token and a trainable one 6*in*out (the "6N"
  of a full fine-tune). LoRA layers count their frozen base weight plus the trainable
  A (r x in) and B (out x r); dropout and the alpha/r scaling are elementwise.
- causal attention: a row of length L has L(L+1)/2 query-key pairs; QK^T and AV cost
  2 * 2 * d_attn FLOPs per pair and layer in the forward pass, with d_attn the query
  heads times head_dim (GQA shares keys and values, not the products). The backward
  pass costs twice the forward, as for the weights.
- the LM head runs only where logits are taken (`logit_positions`): 4*V*d per position
  when frozen, 6*V*d when trainable (a tied head follows its embedding's requires_grad).
- embedding lookups, norms, activations, softmax, rotary and other elementwise work
  count 0, and so does recomputation under gradient checkpointing (model FLOPs, not
  hardware FLOPs).

Only real tokens count: padding and the attention between packed rows are not work the
model needs. MFU is these FLOPs per second over the device's dense matrix-product peak.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .attention_kernels import head_shape
from .device_peak import Peak, checked_peak, device_peak

__all__ = ["ModelFlops", "linear_shapes", "run_utilisation", "utilisation"]
log = logging.getLogger("svdlora")


@dataclass(frozen=True)
class Weight:
    """One matrix product applied at every token: an (out, in) weight."""

    in_features: int
    out_features: int
    trainable: bool

    def training(self) -> int:
        """Forward, input gradient and (when trainable) weight gradient, per token."""
        return (6 if self.trainable else 4) * self.in_features * self.out_features

    def forward(self) -> int:
        return 2 * self.in_features * self.out_features


def _unwrap(model: nn.Module) -> nn.Module:
    """The model under torch.compile and DDP/FSDP/accelerate wrappers (a PeftModel stays)."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and not hasattr(model, "config"):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of an nn.Linear (or subclass) or a GPT-2 Conv1D (weight stored as (in, out))."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):
        return int(module.nx), int(module.nf)
    return None


def linear_shapes(model: nn.Module, names: Iterable[str]) -> dict[str, tuple[int, int]]:
    """(out, in) of the named linear layers (a PEFT LoRA layer's base) of a transformers
    model or its PEFT model, named as in the base model; a ValueError for any other."""
    root = _unwrap(model)
    inner = getattr(getattr(root, "base_model", None), "model", None)  # a PeftModel's base
    shapes = {}
    for name in names:
        try:
            module = root.get_submodule(name)
        except AttributeError:
            module = inner.get_submodule(name) if isinstance(inner, nn.Module) else None
        base = getattr(module, "base_layer", module)
        shape = _linear_shape(base) if base is not None else None
        if shape is None:
            raise ValueError(f"{name} is not a linear layer of the model")
        shapes[name] = (shape[1], shape[0])
    return shapes


def _weights(
    module: nn.Module, skip: nn.Module | None = None, adapters: bool = True
) -> Iterator[Weight]:
    """Every per-token weight under `module` except `skip`; PEFT LoRA layers as base + A + B
    (the base alone without `adapters`)."""
    if module is skip:
        return
    if hasattr(module, "base_layer") and hasattr(module, "lora_A"):
        yield from _weights(module.base_layer, skip, adapters)
        merged = set(getattr(module, "merged_adapters", ()))
        if adapters and not getattr(module, "disable_adapters", False):
            for name in module.active_adapters:
                if name in module.lora_A and name not in merged:
                    yield from _weights(module.lora_A[name], skip)
                    yield from _weights(module.lora_B[name], skip)
        return
    if hasattr(module, "original_module") and hasattr(module, "modules_to_save"):
        # PEFT's modules_to_save: the forward runs the active trained copy, else the original.
        copies = module.modules_to_save
        active = [n for n in getattr(module, "active_adapters", ()) if n in copies]
        disabled = getattr(module, "disable_adapters", False)
        inner = module.original_module if disabled or not active else copies[active[0]]
        yield from _weights(inner, skip, adapters)
        return
    shape = _linear_shape(module)
    if shape is not None:
        yield Weight(*shape, trainable=bool(module.weight.requires_grad))
        return
    for child in module.children():
        yield from _weights(child, skip, adapters)


def _total(weights: Sequence[Weight], training: bool) -> int:
    return sum(w.training() if training else w.forward() for w in weights)


def _pairs(row_lengths: Sequence[int]) -> int:
    """Causal query-key pairs: sum over rows of L(L+1)/2."""
    return sum(int(n) * (int(n) + 1) // 2 for n in row_lengths)


@dataclass(frozen=True)
class ModelFlops:
    """The shapes that decide a step's FLOPs: decoder weights, LM head, attention width."""

    weights: tuple[Weight, ...]
    head: tuple[Weight, ...]
    layers: int
    attention_width: int

    @classmethod
    def from_model(cls, model: nn.Module, adapters: bool = True) -> ModelFlops:
        """Read a transformers causal LM (possibly a PeftModel, possibly DDP-wrapped); without
        `adapters`, a PEFT model counts as its base (what an init's passes run through)."""
        model = _unwrap(model)
        config = model.config
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        heads, _, head_dim = head_shape(config)
        head_module = model.get_output_embeddings()
        return cls(
            weights=tuple(_weights(model, head_module, adapters)),
            head=tuple(_weights(head_module)) if head_module is not None else (),
            layers=int(config.num_hidden_layers),
            attention_width=heads * head_dim,
        )

    def _attention(self, row_lengths: Sequence[int]) -> int:
        """Forward FLOPs of QK^T and AV over causal rows, all layers."""
        return self.layers * 2 * 2 * self.attention_width * _pairs(row_lengths)

    def micro_batch(self, row_lengths: Sequence[int], logit_positions: int) -> float:
        """FLOPs of one forward + backward over rows of these real lengths (no padding)."""
        tokens = sum(int(n) for n in row_lengths)
        return float(
            tokens * _total(self.weights, True)
            + 3 * self._attention(row_lengths)
            + int(logit_positions) * _total(self.head, True)
        )

    def forward(self, row_lengths: Sequence[int], logit_positions: int) -> float:
        """FLOPs of a forward pass only (evaluation, generation's prefill)."""
        tokens = sum(int(n) for n in row_lengths)
        return float(
            tokens * _total(self.weights, False)
            + self._attention(row_lengths)
            + int(logit_positions) * _total(self.head, False)
        )


def utilisation(flops: float, seconds: float, peak: Peak) -> dict[str, Any]:
    """Achieved TFLOP/s (4 significant digits) and its share of the peak (MFU)."""
    achieved = flops / seconds / 1e12 if seconds > 0 else 0.0
    return {
        "tflops": float(f"{achieved:.4g}"),
        "mfu": round(achieved / peak.tflops, 4) if peak.tflops > 0 else 0.0,
        "peak_tflops": peak.tflops,
        "peak_source": peak.source,
    }


def run_utilisation(
    flops: float, seconds: float, device: torch.device, dtype: torch.dtype, processes: int = 1
) -> dict[str, Any]:
    """`utilisation` of a training run over `processes` devices like `device`.

    A measured peak the run beat is measured again (`checked_peak`); what is still above
    100% is logged, since no device runs faster than its peak.
    """
    achieved = flops / processes / seconds / 1e12 if seconds > 0 else 0.0
    peak = checked_peak(device, dtype, device_peak(device, dtype), achieved)
    if achieved > peak.tflops:
        log.warning(
            "MFU above 100%%: %.3g TFLOP/s achieved against a peak of %.3g (%s); set "
            "SVDLORA_PEAK_TFLOPS to the device's dense peak",
            achieved,
            peak.tflops,
            peak.source,
        )
    if processes > 1:  # every process's device counts towards the peak
        peak = dataclasses.replace(peak, tflops=peak.tflops * processes)
    return utilisation(flops, seconds, peak)
