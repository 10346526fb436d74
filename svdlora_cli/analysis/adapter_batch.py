"""Greedy decoding of a base model and several of its LoRA adapters in one batch.

A decode step on a CPU is bound by reading the frozen weights: SmolLM2-135M reads
540 MB of fp32 weights for every token of a batch of 8 rows, and a batch of 56 rows
costs little more. So the students of one base decode together: every batch holds
one block of rows per model (the same questions in each block), every LoRA layer runs
its frozen base layer once for all rows, and each block then gets its own adapter's
`lora_B(lora_A(x)) * scaling`, PEFT's formula, through one batched product per layer.

Only plain LoRA layers on `nn.Linear` or GPT-2's `Conv1D` stack; anything else (DoRA
and other variants, a LoRA bias, embedding or convolution LoRA layers) is refused by
`stack_refusal`, and its adapters decode one model at a time as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch


def stack_refusal(model: Any, adapters: Sequence[str]) -> str | None:
    """Why `adapters` (loaded into the PeftModel `model`) cannot share a batch; None if they can."""
    from peft.tuners.lora.layer import Linear, LoraLayer

    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if type(module) is not Linear:
            return f"{name} is a {type(module).__name__} LoRA layer"
        for adapter in adapters:
            if adapter in module.lora_variant:
                variant = type(module.lora_variant[adapter]).__name__
                return f"{name} has a {variant} in adapter {adapter}"
            if module.lora_bias.get(adapter, False):
                return f"{name} has a LoRA bias in adapter {adapter}"
    return None


def _stacked_factors(module: Any, adapters: Sequence[str]) -> tuple[torch.Tensor, ...]:
    """Each adapter's A^T (in, r) and B^T (r, out), zero-padded to the largest r, and its
    scaling: zeros for an adapter that does not target this layer."""
    weight = module.get_base_layer().weight
    rank = max(module.r.get(a, 0) for a in adapters)
    shape = (len(adapters),)
    a_t = weight.new_zeros((*shape, module.in_features, rank), dtype=torch.float32)
    b_t = weight.new_zeros((*shape, rank, module.out_features), dtype=torch.float32)
    scale = weight.new_zeros((*shape, 1, 1), dtype=torch.float32)
    for i, adapter in enumerate(adapters):
        if adapter not in module.lora_A:
            continue
        r = module.r[adapter]
        a_t[i, :, :r] = module.lora_A[adapter].weight.detach().T
        b_t[i, :r, :] = module.lora_B[adapter].weight.detach().T
        scale[i] = module.scaling[adapter]
    dtype = module.lora_A[next(a for a in adapters if a in module.lora_A)].weight.dtype
    return a_t.to(dtype), b_t.to(dtype), scale.to(dtype)


@contextmanager
def adapter_blocks(model: Any, adapters: Sequence[str], base_blocks: int) -> Iterator[None]:
    """While open, each batch is split into `base_blocks + len(adapters)` equal row blocks:
    the first `base_blocks` get the base model alone, the next one block per adapter.

    PEFT's own adapter application is switched off (`disable_adapter`) and a forward
    hook on every LoRA layer adds each block's `lora_B(lora_A(x)) * scaling`.
    """
    from peft.tuners.lora.layer import LoraLayer

    blocks = base_blocks + len(adapters)

    def add_adapters(factors: tuple[torch.Tensor, ...], args: tuple[Any, ...], out: Any) -> Any:
        a_t, b_t, scale = factors
        x = args[0]
        rows = x.shape[0] // blocks
        if rows * blocks != x.shape[0]:
            raise ValueError(f"a batch of {x.shape[0]} rows is not {blocks} equal blocks")
        start = base_blocks * rows
        xs = x[start:].reshape(len(adapters), -1, x.shape[-1]).to(a_t.dtype)
        delta = torch.bmm(torch.bmm(xs, a_t), b_t) * scale
        out[start:] += delta.reshape(out[start:].shape).to(out.dtype)
        return out

    handles = []
    try:
        for module in model.modules():
            if isinstance(module, LoraLayer) and any(a in module.lora_A for a in adapters):
                factors = _stacked_factors(module, adapters)
                handles.append(
                    module.register_forward_hook(
                        lambda _m, args, out, f=factors: add_adapters(f, args, out)
                    )
                )
        with model.disable_adapter():
            yield
    finally:
        for handle in handles:
            handle.remove()


def stacked_completions(
    base_model: str,
    adapters: Sequence[str | None],
    questions: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 8,
    max_rows: int = 128,
) -> list[list[str]] | None:
    """Each member's greedy completions (None: the base alone), decoded in shared batches of
    at most `max_rows` rows; None when some adapter cannot be stacked (`stack_refusal`)."""
    from peft import PeftModel

    from ..models.loading import load_model, load_tokenizer
    from .generation import greedy_completions

    paths = [a for a in adapters if a is not None]
    if not paths:
        raise ValueError("stacking needs at least one adapter")
    names = [f"member{i}" for i in range(len(paths))]
    model = PeftModel.from_pretrained(load_model(base_model), paths[0], adapter_name=names[0])
    for name, path in zip(names[1:], paths[1:], strict=True):
        model.load_adapter(path, adapter_name=name)
    if stack_refusal(model, names) is not None:
        return None
    tokenizer = load_tokenizer(base_model)
    named = dict(zip(paths, names, strict=True))
    order = [None] * (len(adapters) - len(paths)) + [named[p] for p in paths]
    per_pass = max(1, max_rows // batch_size)
    completions: dict[str | None, list[str]] = {}
    for start in range(0, len(order), per_pass):
        group = order[start : start + per_pass]
        members = [m for m in group if m is not None]
        with adapter_blocks(model, members, base_blocks=len(group) - len(members)):
            outputs = greedy_completions(
                model, tokenizer, questions, max_new_tokens, batch_size, copies=len(group)
            )
        completions.update(zip(group, outputs, strict=True))
    return [completions[None if a is None else named[a]] for a in adapters]
