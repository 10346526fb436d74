"""Training checkpoints for --save-every / --resume, without pickle.

Trainable parameters, AdamW moments and every rank's RNG state go to
safetensors; the step, the scheduler state, the optimizer's hyperparameters and
the step log go to JSON. The folder is replaced atomically, so a crash leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import SvdloraError
from ..files import atomic_dir
from .steplog import StepRow

STATE = "state.json"
TENSORS = "tensors.safetensors"
FORMAT = 2  # 1 (svdlora <= 0.1) indexed the optimizer state by position


def _options(**extra: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **extra)


def _all_ranks(value: Any) -> list[Any]:
    """`value` from every process of a launch, in rank order ([value] in one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def save_checkpoint(
    folder: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    rows: list[StepRow],
    tokens: int,
    train_seconds: float,
    run_key: str,
) -> None:
    """Everything needed to continue exactly after `step`.

    Trainable weights and optimizer moments are gathered into full tensors named by
    parameter (torch.distributed.checkpoint's full state dict), so one checkpoint serves
    a single process, DDP and FSDP alike, and any world size on resume. Under a launch
    every rank must call this (the gather is a collective); rank 0 writes.
    """
    from torch.distributed.checkpoint.state_dict import get_state_dict

    params, optim = get_state_dict(
        model, optimizer, options=_options(cpu_offload=True, ignore_frozen_params=True)
    )
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    rng = _all_ranks((torch.get_rng_state(), cuda))
    if _rank() == 0:
        record = {
            "format": FORMAT,
            "step": step,
            "tokens": tokens,
            "train_seconds": train_seconds,
            "run_key": run_key,
            "world_size": len(rng),
            "param_groups": optim["param_groups"],
            "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
            "rows": [asdict(r) for r in rows],
        }
        with atomic_dir(folder) as tmp:
            save_file(_flat_tensors(params, optim, rng), str(tmp / TENSORS))
            (tmp / STATE).write_text(json.dumps(record))
    _barrier()  # nobody reads the folder before rank 0 has replaced it


def _flat_tensors(
    params: dict[str, torch.Tensor], optim: dict[str, Any], rng: list[Any]
) -> dict[str, torch.Tensor]:
    """`param.NAME`, `opt.NAME.FIELD` and `rng.{cpu,cuda}.RANK`, contiguous on the CPU."""
    tensors = {f"param.{name}": t.detach().cpu().contiguous() for name, t in params.items()}
    for name, state in optim["state"].items():
        for key, value in state.items():
            tensors[f"opt.{name}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    for rank, (cpu_state, cuda_state) in enumerate(rng):
        tensors[f"rng.cpu.{rank}"] = cpu_state
        if cuda_state is not None:
            tensors[f"rng.cuda.{rank}"] = cuda_state
    return tensors


def load_checkpoint(
    folder: Path, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any, run_key: str
) -> tuple[int, list[StepRow], int, float] | None:
    """Restore a checkpoint made by the same run; None when there is none.

    Under a launch every rank reads the folder, so it must be on a filesystem every node
    sees; a checkpoint some ranks see and others do not is an error, not a silent restart.
    """
    from torch.distributed.checkpoint.state_dict import set_state_dict

    seen = _all_ranks((folder / STATE).is_file())
    if any(seen) and not all(seen):
        missing = [rank for rank, found in enumerate(seen) if not found]
        raise SvdloraError(
            f"the checkpoint in {folder} is missing on process(es) {missing}",
            "put --output-dir on a filesystem that every node shares",
        )
    if not seen[0]:
        return None
    record = json.loads((folder / STATE).read_text())
    if record.get("format") != FORMAT:
        raise SvdloraError(
            f"the checkpoint in {folder} was written by another svdlora version",
            "delete the folder to start afresh",
        )
    if record.get("run_key") != run_key:
        raise SvdloraError(
            f"the checkpoint in {folder} belongs to a run with other inputs or settings",
            "rerun with the original settings, or delete the folder to start afresh",
        )
    tensors = load_file(str(folder / TENSORS))
    params = {k.removeprefix("param."): v for k, v in tensors.items() if k.startswith("param.")}
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            name, field = key.removeprefix("opt.").rsplit(".", 1)
            state.setdefault(name, {})[field] = value
    set_state_dict(
        model,
        optimizer,
        model_state_dict=params,
        optim_state_dict={"state": state, "param_groups": record["param_groups"]},
        options=_options(strict=False),  # the frozen weights are not in the checkpoint
    )
    scheduler.load_state_dict({**scheduler.state_dict(), **record["scheduler"]})
    rank = _rank() if f"rng.cpu.{_rank()}" in tensors else 0
    torch.set_rng_state(tensors[f"rng.cpu.{rank}"])
    if torch.cuda.is_available() and f"rng.cuda.{rank}" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng.cuda.{rank}"])
    rows = [StepRow(**r) for r in record["rows"]]
    return int(record["step"]), rows, int(record["tokens"]), float(record["train_seconds"])
