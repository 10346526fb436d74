"""Training checkpoints for --save-every / --resume, without pickle.

Trainable parameters, AdamW moments and the RNG state go to safetensors; the
step, the scheduler state, the optimizer's hyperparameters and the step log go
to JSON. The folder is replaced atomically, so a crash leaves the previous
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
    """Everything needed to continue exactly after `step`."""
    names = {id(p): n for n, p in model.named_parameters()}
    tensors: dict[str, torch.Tensor] = {
        f"param.{n}": p.detach().cpu().contiguous()
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    opt_state = optimizer.state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"opt.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.cpu"] = torch.get_rng_state()
    record = {
        "step": step,
        "tokens": tokens,
        "train_seconds": train_seconds,
        "run_key": run_key,
        "param_names": [names[id(p)] for p in params],
        "param_groups": opt_state["param_groups"],
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
        "rows": [asdict(r) for r in rows],
    }
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / TENSORS))
        (tmp / STATE).write_text(json.dumps(record))


def load_checkpoint(
    folder: Path, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any, run_key: str
) -> tuple[int, list[StepRow], int, float] | None:
    """Restore a checkpoint made by the same run; None when there is none."""
    if not (folder / STATE).is_file():
        return None
    record = json.loads((folder / STATE).read_text())
    if record.get("run_key") != run_key:
        raise SvdloraError(
            f"the checkpoint in {folder} belongs to a run with other inputs or settings",
            "rerun with the original settings, or delete the folder to start afresh",
        )
    tensors = load_file(str(folder / TENSORS))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("param."):
                params[key.removeprefix("param.")].copy_(value)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": record["param_groups"]})
    scheduler.load_state_dict({**scheduler.state_dict(), **record["scheduler"]})
    torch.set_rng_state(tensors["rng.cpu"])
    rows = [StepRow(**r) for r in record["rows"]]
    return int(record["step"]), rows, int(record["tokens"]), float(record["train_seconds"])
