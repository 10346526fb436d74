"""Training checkpoints for --save-every / --resume, without pickle.

Trainable parameters, AdamW moments and every rank's RNG state go to
safetensors; the step, the scheduler state, the optimizer's hyperparameters and
the step log go to JSON. The folder is replaced atomically, so a crash leaves the previous
checkpoint intact.

A checkpoint also records the run's identity (`run_identity`): every setting that shapes
its tensors, its data or its schedule, by name. A run resumes from it only when all of
them agree; otherwise the error names each option that changed (old -> new).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import InvalidOptionError, SvdloraError
from ..files import atomic_dir
from .steplog import StepRow

log = logging.getLogger("svdlora")

STATE = "state.json"
TENSORS = "tensors.safetensors"
# 1 (svdlora <= 0.1) indexed the optimizer state by position; 2 kept one hash of the
# settings; 3 keeps the identity itself, so a refusal can name what changed.
FORMAT = 3

# How the error names an identity entry; the rest are TrainConfig fields, named --field-name.
OPTION_NAMES = {
    "base_model": "--base-model",
    "train_data": "the training rows (--train-data, --prompt-field / --answer-field)",
    "eval_data": "the eval rows (--eval-data, --prompt-field / --answer-field)",
    "lora_rank": "--rank",
    "lora_alpha": "--lora-alpha",
    "lora_dropout": "--lora-dropout",
    "lora_init": "--init",
    "lora_ranks": "the per-module ranks (--rank, --svd-factors)",
    "target_modules": "--include",
    "seed": "--seed / --seeds",
    "precision": "--bf16 / --fp16",
    "packing": "--packing / --no-packing",
    "max_grad_norm": "the gradient-norm clip",
    "trainable": "the trainable tensors (their names or shapes)",
    "batch_order": "the batch order (the number of rows, --batch-size, --tokens-per-step)",
}
# Entries that follow from named ones: shown only when nothing named explains a change.
DERIVED = ("trainable", "batch_order", "lora_ranks")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, separators=(",", ":")).encode()).hexdigest()[:16]


def run_identity(
    model: Any, train: Any, evaluation: Any, config: Any, schedule: Sequence[Any]
) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it: the result settings
    (learning rate, batch size, tokens per step, seed, ...), the base model, digests of the
    tokenized train and eval rows, the LoRA's rank, alpha, dropout, init and target modules,
    the trainable tensors' names and shapes, and the batch order. JSON values throughout."""
    trainable = [(n, list(p.shape)) for n, p in model.named_parameters() if p.requires_grad]
    model_config = getattr(model, "config", None)
    identity: dict[str, Any] = {
        **config.result_settings(),
        "base_model": str(getattr(model_config, "_name_or_path", "") or ""),
        "train_data": _rows(train),
        "eval_data": _rows(evaluation) if evaluation is not None else None,
        "trainable": f"{len(trainable)} tensors, sha256 {_digest(trainable)}",
        "batch_order": _digest([list(map(list, s.micro_batches)) for s in schedule]),
    }
    peft = getattr(model, "peft_config", {}).get("default")
    if peft is not None:
        modules = sorted({n.split(".lora_")[0] for n, _ in trainable if ".lora_" in n})
        identity.update(
            lora_rank=peft.r,
            lora_alpha=peft.lora_alpha,
            lora_dropout=peft.lora_dropout,
            lora_init=str(peft.init_lora_weights),
            lora_ranks=_digest(sorted(dict(peft.rank_pattern or {}).items())),
            target_modules=f"{len(modules)} modules, sha256 {_digest(modules)}",
        )
    return json.loads(json.dumps(identity))  # tuples -> lists, as the record reads back


def _rows(data: Any) -> str:
    """`N rows, sha256 ...` of a tokenized set: its token ids and labels."""
    return f"{len(data)} rows, sha256 {_digest([data.input_ids, data.labels])}"


def identity_changes(saved: Any, current: Any) -> list[str]:
    """`--rank 4 -> 8` for every entry that differs (derived ones only if nothing else does)."""
    if saved == current:
        return []
    if not (isinstance(saved, dict) and isinstance(current, dict)):
        return ["the run's settings"]
    changed = [k for k in dict.fromkeys([*saved, *current]) if saved.get(k) != current.get(k)]
    named = [k for k in changed if k not in DERIVED] or changed
    return [
        f"{OPTION_NAMES.get(k, '--' + k.replace('_', '-'))} {saved.get(k)} -> {current.get(k)}"
        for k in named
    ]


def checkpoint_step(folder: Path) -> int | None:
    """The step of the checkpoint in `folder`, or None when there is none (or it is unreadable)."""
    try:
        return int(json.loads((folder / STATE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def warn_unused(folder: Path) -> None:
    """A checkpoint an earlier run left behind, about to be replaced by a run from step 0."""
    step = checkpoint_step(folder)
    if step is not None:
        log.warning(
            "%s holds the checkpoint of an interrupted run at step %d, which this run (from "
            "step 0) replaces; add --resume to continue from it instead",
            folder,
            step,
        )


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
    identity: dict[str, Any],
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
            "identity": identity,
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
    folder: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    identity: dict[str, Any],
) -> tuple[int, list[StepRow], int, float] | None:
    """Restore a checkpoint made by the same run (same `identity`); None when there is none.

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
    changes = identity_changes(record.get("identity"), identity)
    if changes:
        raise InvalidOptionError(
            f"the checkpoint in {folder} belongs to a run with other inputs or settings: "
            + "; ".join(changes),
            f"rerun with the checkpoint's values to resume it at step {record.get('step')}, "
            "or leave out --resume to start again from step 0",
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
