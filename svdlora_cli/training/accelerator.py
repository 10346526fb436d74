"""accelerate's side of training: the Accelerator for a device and precision, which
engine it runs (DDP, FSDP, DeepSpeed), full weights gathered from shards, and the
dtype the matrix products run in."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InvalidOptionError


def make_accelerator(device: str, precision: str) -> Any:
    """An Accelerator for the device; single-process state is reset between runs in one process."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    from ..devices import check_device

    if device not in ("auto",):
        check_device(device)
    if precision == "fp16" and not torch.cuda.is_available():
        raise InvalidOptionError(
            "--fp16 needs a CUDA device", "use --bf16 or full precision on CPU"
        )
    gpu = torch.cuda.is_available() and device != "cpu"
    if precision == "bf16" and gpu and not torch.cuda.is_bf16_supported():
        raise InvalidOptionError("this GPU does not support bf16", "use --fp16 instead")
    if not PartialState().use_distributed:
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=device == "cpu", mixed_precision=precision)


def engine(accelerator: Any) -> str:
    """NO, MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED, ... (accelerate's DistributedType name)."""
    return str(accelerator.distributed_type).rsplit(".", 1)[-1]


def gathered_state_dict(
    accelerator: Any, model: Any, trainable_only: bool = False
) -> dict[str, Any] | None:
    """Under FSDP or ZeRO-3 the full weights (a collective: every rank calls it); None
    elsewhere, where `save_pretrained` reads the model itself.

    Under FSDP only rank 0 receives the tensors, in host memory, and `trainable_only`
    leaves the frozen base out: a 7B LoRA student gathers its adapters, not 30 GB.
    """
    kind = engine(accelerator)
    if kind == "FSDP":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(
            full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only
        )
        return get_model_state_dict(model, options=options)
    return accelerator.get_state_dict(model) if kind == "DEEPSPEED" else None


def compute_dtype(precision: str, model: Any) -> torch.dtype:
    """The dtype the matrix products run in: autocast's, else the weights'."""
    if precision in ("bf16", "fp16"):
        return torch.bfloat16 if precision == "bf16" else torch.float16
    return next(model.parameters()).dtype


def storage_dtype(precision: str) -> torch.dtype:
    """The dtype a student's frozen base is stored in under a --bf16/--fp16 run."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
