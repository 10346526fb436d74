"""Eval losses of a bf16/fp16 run computed in fp32, so that a small adapter is not deleted.

Under autocast a matrix product's output lies on bf16's grid (fp16's). PEFT adds the LoRA
branch's output to the base layer's, and when that branch changes an activation by less
than half a grid step (about 0.2% of it in bf16) the sum rounds back to the base's value:
the change is deleted, not rounded; a little above that, the few elements that cross a
step carry a full step each, rounding noise larger than the change. A LoRA that starts at
B = 0 changes activations by about lr * steps relative, so its first tens of steps are
poorly represented in a bf16 forward, while an adapter that starts large (the svd init)
is not: a bf16 eval loss is biased in exactly the comparison this tool makes.
Measured on SmolLM2-135M after 20 steps of a random-init LoRA (fp32 training, 16 eval
rows): eval loss 1.0757 in fp32 against 1.1111 under bf16 autocast, where the base's own
loss moves only from 1.2939 to 1.2959 (benchmarks/RESULTS.md).

`full_precision` runs an evaluation pass in fp32 instead: each module's frozen bf16/fp16
weights are widened in place for its forward and narrowed back after it (bf16 -> fp32 ->
bf16 is exact, so training resumes on the same bits), and accelerate's autocast wrapper of
the forward is bypassed; packed rows take the exact per-row SDPA (the varlen kernels take
bf16/fp16 only). It does this in a plain single process; under DDP, FSDP or DeepSpeed
(even with one process) the pass keeps the training's autocast, and the run's JSON says
which (`eval_precision`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from .packing import exact_rows

LOW = (torch.bfloat16, torch.float16)


def eval_precision(accelerator: Any) -> str:
    """`fp32` where evaluation runs in fp32 (every plain single-process run), else the
    training's autocast dtype (`bf16`, `fp16`): DDP, FSDP and DeepSpeed own their parameters
    (FSDP's are sharded), even in one process, so their weights are not widened."""
    from .accelerator import engine

    mixed = str(getattr(accelerator, "mixed_precision", "no"))
    return "fp32" if mixed not in ("bf16", "fp16") or engine(accelerator) == "NO" else mixed


@contextlib.contextmanager
def full_precision(model: Any, accelerator: Any) -> Iterator[None]:
    """An evaluation pass of `model` (as `accelerator.prepare` returned it) in fp32 where
    `eval_precision` says so, else under the training's autocast.

    Each module's own bf16/fp16 weights are widened just before its forward and narrowed
    right after (forward hooks), so the pass needs one layer's fp32 weights at a time, not
    the model's: a 7B student that fits a 24 GB GPU in bf16 still fits for its eval.
    """
    if eval_precision(accelerator) != "fp32" or accelerator.mixed_precision not in ("bf16", "fp16"):
        with accelerator.autocast():
            yield
        return
    patched = model.__dict__.get("forward")  # accelerate's autocast wrapper, if any
    original = model.__dict__.get("_original_forward")
    hooks, narrow = [], []
    try:
        for module in model.modules():
            own = [
                t
                for t in (*module.parameters(recurse=False), *module.buffers(recurse=False))
                if t.dtype in LOW
            ]
            if own:
                narrow += [(t, t.dtype) for t in own]
                hooks.append(module.register_forward_pre_hook(_widen(own)))
                hooks.append(module.register_forward_hook(_narrow(own)))
        if patched is not None and original is not None:
            model.forward = original
        with torch.autocast(accelerator.device.type, enabled=False), exact_rows():
            yield
    finally:
        for hook in hooks:
            hook.remove()
        if patched is not None and original is not None:
            model.forward = patched
        for t, dtype in narrow:  # after an error inside a forward too
            t.data = t.data.to(dtype)


def _widen(tensors: list[torch.Tensor]) -> Any:
    def hook(module: Any, args: Any) -> None:
        for t in tensors:
            t.data = t.data.float()

    return hook


def _narrow(tensors: list[torch.Tensor]) -> Any:
    dtypes = [t.dtype for t in tensors]

    def hook(module: Any, args: Any, output: Any) -> None:
        for t, dtype in zip(tensors, dtypes, strict=True):
            t.data = t.data.to(dtype)  # exact: these values came from `dtype`

    return hook
