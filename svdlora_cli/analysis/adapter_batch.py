"""Greedy decoding of a base model and several of its LoRA adapters in one batch.

A decode step on a CPU is bound by reading the frozen weights: SmolLM2-135M reads
540 MB of fp32 weights for every token of a batch of 8 rows, and a batch of 56 rows
costs little more. So the students of one base decode together: every batch holds
one block of rows per model (the same questions in each block), every LoRA layer runs
its frozen base layer once for all rows, and each block then gets its own adapter's
`lora_B(lora_A(x)) * scaling`, PEFT's formula. Rows leave the batch when they end
(`generation.greedy_tokens`), so the rows still decoding never wait on finished ones.

Only plain LoRA layers on `nn.Linear` or GPT-2's `Conv1D` stack; anything else (DoRA
and other variants, a LoRA bias, embedding or convolution LoRA layers) is refused by
`stack_refusal`, and its adapters decode one model at a time as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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


def _factors(module: Any, adapters: Sequence[str]) -> list[tuple[torch.Tensor, ...] | None]:
    """Per adapter, its A^T (in, r), B^T (r, out) and scaling on this layer; None where the
    adapter does not target it."""
    out: list[tuple[torch.Tensor, ...] | None] = []
    for adapter in adapters:
        if adapter not in module.lora_A:
            out.append(None)
            continue
        a_t = module.lora_A[adapter].weight.detach().T
        b_t = module.lora_B[adapter].weight.detach().T
        scale = torch.tensor(module.scaling[adapter], dtype=a_t.dtype, device=a_t.device)
        out.append((a_t, b_t, scale))
    return out


@contextmanager
def adapter_rows(
    model: Any, members: Sequence[str | None]
) -> Iterator[Callable[[Sequence[int]], None]]:
    """While open, PEFT's own adapter application is off (`disable_adapter`) and a forward
    hook on every LoRA layer adds to each row its member's `lora_B(lora_A(x)) * scaling`.

    Yields `assign(blocks)`: row i of the next batches belongs to `members[blocks[i]]`
    (None: the base alone). Rows of one member must be contiguous.
    """
    from peft.tuners.lora.layer import LoraLayer

    names = [m for m in members if m is not None]
    column = {i: names.index(m) for i, m in enumerate(members) if m is not None}
    runs: list[tuple[int, int, int]] = []  # (first row, end row, adapter column)

    def assign(blocks: Sequence[int]) -> None:
        runs.clear()
        seen: set[int] = set()
        start = 0
        for end in range(1, len(blocks) + 1):
            if end == len(blocks) or blocks[end] != blocks[start]:
                if blocks[start] in seen:
                    raise ValueError("the rows of one member must be contiguous")
                seen.add(blocks[start])
                if blocks[start] in column:
                    runs.append((start, end, column[blocks[start]]))
                start = end

    def add(factors: list[tuple[torch.Tensor, ...] | None], args: tuple[Any, ...], out: Any) -> Any:
        x = args[0]
        for start, end, i in runs:
            if factors[i] is not None:
                a_t, b_t, scale = factors[i]
                lora = (x[start:end].to(a_t.dtype) @ a_t) @ b_t * scale
                out[start:end] += lora.to(out.dtype)
        return out

    handles = []
    try:
        for module in model.modules():
            if isinstance(module, LoraLayer) and any(a in module.lora_A for a in names):
                factors = _factors(module, names)
                handles.append(
                    module.register_forward_hook(lambda _m, args, out, f=factors: add(f, args, out))
                )
        with model.disable_adapter():
            yield assign
    finally:
        for handle in handles:
            handle.remove()


def stacked_completions(
    base_model: str,
    adapters: Sequence[str | None],
    questions: Sequence[str],
    max_new_tokens: int,
    device: Any = "cpu",
    batch_size: int = 8,
    max_rows: int = 128,
) -> list[list[str]] | None:
    """Each member's greedy completions (None: the base alone), decoded in shared batches of
    at most `max_rows` rows; None when some adapter cannot be stacked (`stack_refusal`)."""
    from peft import PeftModel

    from ..models.loading import load_model, load_tokenizer
    from .generation import greedy_completions

    members = [None if a is None else f"member{i}" for i, a in enumerate(adapters)]
    loaded = [(m, a) for m, a in zip(members, adapters, strict=True) if m is not None]
    if not loaded:
        raise ValueError("stacking needs at least one adapter")
    (first, path), *rest = loaded
    model = PeftModel.from_pretrained(load_model(base_model), path, adapter_name=first)
    for name, path in rest:
        model.load_adapter(path, adapter_name=name)
    if stack_refusal(model, [name for name, _ in loaded]) is not None:
        return None
    model.to(device)
    tokenizer = load_tokenizer(base_model)
    per_pass = max(1, max_rows // batch_size)
    completions: dict[str | None, list[str]] = {}
    for start in range(0, len(members), per_pass):
        group = members[start : start + per_pass]
        with adapter_rows(model, group) as assign:
            outputs = greedy_completions(
                model, tokenizer, questions, max_new_tokens, batch_size, len(group), assign
            )
        completions.update(zip(group, outputs, strict=True))
    return [completions[m] for m in members]
