"""One training loop for teacher and students: plain PyTorch over accelerate.

It reads top to bottom (setup, initial loss, fit, evaluate) and runs unchanged
under `accelerate launch` and `torchrun`: the Accelerator picks the device and
process group from the environment, and each process takes its share of every
micro-batch. The loss is the token-weighted mean cross-entropy over answer
tokens of the whole optimizer step, so gradient accumulation is exact.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import TokenizedSet
from ..errors import InvalidOptionError
from ..store.cache import content_key
from .accelerator import compute_dtype, engine
from .config import TrainConfig
from .loss import loss_sum
from .packing import PackedRows, logit_count, make_batcher, row_lengths
from .resume_state import load_checkpoint, run_identity, save_checkpoint, warn_unused
from .schedule import Step, evaluation_batches, training_schedule
from .steplog import StepRow

StepProgress = Callable[[int, int, float], None]
Batcher = Callable[[Sequence[int], TokenizedSet], dict[str, Any]]


@dataclass
class FitResult:
    """The step log, the schedule that was followed, and throughput."""

    rows: list[StepRow]
    schedule: list[Step]
    tokens: int
    train_seconds: float
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds > 0 else 0.0


def _shard(indices: Sequence[int], accelerator: Any) -> tuple[list[int], float]:
    """This process's rows of a micro-batch (all of them in a single process), and their
    weight: 1, or 0 for a stand-in row when the micro-batch has fewer rows than processes.

    Every process must run the same number of forward passes (DDP syncs buffers and FSDP
    gathers weights in each), so a process without rows runs one whose loss counts 0.
    """
    mine = list(indices)[accelerator.process_index :: accelerator.num_processes]
    return (mine, 1.0) if mine else (list(indices)[:1], 0.0)


def real_tokens(batch: dict[str, Any]) -> int:
    """Non-padding tokens of a padded or packed host batch."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def make_optimizer(params: list[Any], config: TrainConfig, device: torch.device) -> Any:
    """AdamW, fused into one kernel per step where torch has it (CPU and CUDA)."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(
        params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=fused or None
    )


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors (and packed rows' bounds) on the device; host counts stay."""
    moved: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, (torch.Tensor, PackedRows)):
            value = value.to(device, non_blocking=True)
        moved[key] = value
    return moved


@torch.no_grad()
def mean_loss(
    model: Any,
    data: TokenizedSet,
    indices: Sequence[Sequence[int]],
    batch_of: Batcher,
    accelerator: Any,
    full: bool = False,
) -> float:
    """Token-weighted mean loss over micro-batches, summed across processes (one host
    read at the end, none per micro-batch). `full`: an evaluation, in fp32 even in a bf16
    run where it can be (eval_precision.py); else under the training's autocast."""
    from .eval_precision import full_precision

    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    precision = full_precision(model, accelerator) if full else accelerator.autocast()
    with precision:
        for batch_indices in indices:
            mine, weight = _shard(batch_indices, accelerator)
            loss, count = loss_sum(model, _to(batch_of(mine, data), accelerator.device))
            total[0] += weight * loss.double()
            total[1] += weight * count
    total = accelerator.reduce(total, reduction="sum")
    model.train(was_training)
    loss, count = total.tolist()
    return loss / count if count > 0 else float("nan")


def fit(
    model: Any,
    train: TokenizedSet,
    evaluation: TokenizedSet | None,
    config: TrainConfig,
    pad_id: int,
    accelerator: Any,
    progress: StepProgress | None = None,
    checkpoint_dir: Path | None = None,
    starts: dict[Any, Any] | None = None,
    start_key: str | None = None,
    after_step: Callable[[StepRow], None] | None = None,
) -> FitResult:
    """Train `model`'s trainable parameters; row 0 is the loss before any update.

    With `save_every`, a checkpoint goes to `checkpoint_dir` every N steps; with
    `resume`, training continues from it on the same batches, so the end state
    matches an uninterrupted run (a run with other settings is refused, naming them). The
    checkpoint is removed when training ends; a Ctrl-C carries the step of the one kept
    (`KeyboardInterrupt.checkpoint_step`, None when there is none).
    `starts` shares row 0's losses between runs of one process whose starting model is
    identical (the caller's `start_key` says so: same weights, data and precision): the
    train loss for runs with the same first batch, the eval loss for all of them. The
    runs of a learning-rate grid, or B = 0 inits over seeds, compute each once.
    `after_step` sees each step's row once it is logged, on every process (the teacher
    keeps its weights there: `train-teacher --save-steps`).
    """
    from transformers import get_scheduler

    from .eval_precision import eval_precision
    from .flops import ModelFlops, run_utilisation

    config.validate()
    if (config.save_every or config.resume) and engine(accelerator) == "DEEPSPEED":
        raise InvalidOptionError(
            "--save-every / --resume do not work under DeepSpeed yet",
            "use the FSDP config (examples/distributed/fsdp_8gpu.yaml), whose checkpoints "
            "work, or drop --save-every",
        )
    schedule = training_schedule(train, config, config.epochs, config.max_steps)
    steps_per_epoch = max(1, len(training_schedule(train, config, 1, None)))
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    params = [p for p in model.parameters() if p.requires_grad]
    wanted = checkpoint_dir is not None and (config.save_every or config.resume)
    identity = run_identity(model, train, evaluation, config, schedule) if wanted else {}
    optimizer = make_optimizer(params, config, accelerator.device)
    scheduler = get_scheduler(config.lr_scheduler, optimizer, config.warmup_steps, len(schedule))
    model, optimizer = accelerator.prepare(model, optimizer)
    # FSDP2 swaps the parameters for sharded ones: clip the ones the optimizer steps.
    params = [p for p in model.parameters() if p.requires_grad]
    unwrapped = accelerator.unwrap_model(model)
    low_precision = compute_dtype(config.precision, unwrapped) in (torch.bfloat16, torch.float16)
    batching = make_batcher(
        model,
        unwrapped,
        train,
        pad_id,
        config.packing,
        config.max_length,
        lambda batch: _to(batch, accelerator.device),
        accelerator.autocast,
        low_precision,
        accelerator.device,
        verdicts=starts,
    )
    batch_of = batching.build
    counter = ModelFlops.from_model(unwrapped)
    eval_batches = evaluation_batches(evaluation, config)

    def evaluate() -> float | None:
        if not eval_batches or evaluation is None:
            return None
        return mean_loss(model, evaluation, eval_batches, batch_of, accelerator, full=True)

    model.train()
    start = time.perf_counter()
    restored = None
    if checkpoint_dir is not None and not config.resume and accelerator.is_main_process:
        warn_unused(checkpoint_dir)
    if config.resume and checkpoint_dir is not None:
        # A no-grad forward (the packing check) leaves FSDP2's root modules unsharded, so
        # the optimizer's parameters would not be the model's when the state loads.
        for module in model.modules():
            if hasattr(module, "reshard") and hasattr(module, "_get_fsdp_state"):
                module.reshard()
        restored = load_checkpoint(checkpoint_dir, model, optimizer, scheduler, identity)
    flops, counted_tokens = 0.0, 0
    if restored is not None:
        done, rows, tokens, train_seconds = restored
        start -= rows[-1].elapsed_s
        run_flops = rows[-1].flops  # None: a checkpoint from before the flops column
    else:

        def remembered(kind: str, batches: Any, compute: Callable[[], Any]) -> Any:
            if starts is None or start_key is None:
                return compute()
            memo_key = content_key("fit-start", start=start_key, loss=kind, batches=batches)
            if memo_key not in starts:
                starts[memo_key] = compute()
            return starts[memo_key]

        first = StepRow(
            step=0,
            epoch=0.0,
            loss=remembered(
                "train",
                schedule[0].micro_batches,
                lambda: mean_loss(model, train, schedule[0].micro_batches, batch_of, accelerator),
            ),
            eval_loss=remembered("eval", eval_batches, evaluate),
            elapsed_s=0.0,
            flops=0.0,
        )
        rows = [first]
        run_flops = 0.0
        done, train_seconds, tokens = 0, 0.0, 0
    saved = done if restored is not None else None  # the step of the checkpoint on disk
    try:
        for number, step in enumerate(schedule, start=1):
            if number <= done:
                continue
            tic = time.perf_counter()
            shards = [_shard(b, accelerator) for b in step.micro_batches]
            batches = [(batch_of(mine, train), weight) for mine, weight in shards]
            answer_tokens = sum(weight * b["answer_tokens"] for b, weight in batches)
            # Host numbers become device tensors by a fill kernel: a copy from pageable host
            # memory would wait for the device (a sync) before the step has started.
            total_answer = accelerator.reduce(
                torch.full((), float(answer_tokens), device=accelerator.device), "sum"
            )
            step_loss = torch.zeros((), dtype=torch.float64, device=accelerator.device)
            step_tokens, step_flops = 0, 0.0
            for host_batch, weight in batches:
                batch = _to(host_batch, accelerator.device)
                with accelerator.autocast():
                    summed, _ = loss_sum(model, batch)
                summed = summed * weight
                # Scale so the summed gradient is the mean over all answer tokens of the step
                # (times world size, which DDP's gradient averaging divides back out).
                accelerator.backward(summed * accelerator.num_processes / total_answer)
                step_loss += summed.detach().double()
                if weight:
                    step_tokens += real_tokens(host_batch)
                    step_flops += counter.micro_batch(
                        row_lengths(host_batch), logit_count(host_batch)
                    )
            grad_norm = accelerator.clip_grad_norm_(params, config.max_grad_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            flops += step_flops
            # Tokens and FLOPs of every process, as the whole run's: summed like the loss.
            counts = [
                torch.full((1,), value, dtype=torch.float64, device=step_loss.device)
                for value in (float(step_tokens), step_flops)
            ]
            summed_stats = accelerator.reduce(torch.cat([step_loss.reshape(1), *counts]), "sum")
            norm = (
                torch.as_tensor(grad_norm, dtype=torch.float64, device=step_loss.device).reshape(1)
                if grad_norm is not None
                else torch.full((1,), float("nan"), dtype=torch.float64, device=step_loss.device)
            )
            # One read back to the host per step: loss, tokens, FLOPs, answer tokens and norm.
            answers = total_answer.reshape(1).double()
            loss_total, step_total, flops_total, answer_total, norm_value = torch.cat(
                [summed_stats, answers, norm]
            ).tolist()
            run_flops = None if run_flops is None else run_flops + flops_total
            counted_tokens += step_tokens
            tokens += int(step_total)
            train_seconds += time.perf_counter() - tic
            last = number == len(schedule)
            due = config.eval_every > 0 and number % config.eval_every == 0
            loss_value = loss_total / answer_total
            rows.append(
                StepRow(
                    step=number,
                    epoch=round(number / steps_per_epoch, 4),
                    loss=loss_value,
                    lr=lr,
                    grad_norm=norm_value if grad_norm is not None else None,
                    eval_loss=evaluate() if (due or last) else None,
                    tokens=tokens,
                    elapsed_s=round(time.perf_counter() - start, 3),
                    flops=run_flops,
                )
            )
            if after_step is not None:
                after_step(rows[-1])
            if (
                checkpoint_dir is not None
                and config.save_every
                and number % config.save_every == 0
                and not last
            ):
                save_checkpoint(  # a collective: every rank gathers, rank 0 writes, all wait
                    checkpoint_dir,
                    model,
                    optimizer,
                    scheduler,
                    number,
                    rows,
                    tokens,
                    train_seconds,
                    identity,
                )
                saved = number
            if progress:
                progress(number, len(schedule), loss_value)
    except KeyboardInterrupt as stop:
        stop.checkpoint_step = saved  # type: ignore[attr-defined]  # for the Ctrl-C message
        raise
    finally:
        batching.restore()
    if checkpoint_dir is not None and accelerator.is_main_process:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    result = FitResult(rows, schedule, tokens, train_seconds)
    per_token = flops / counted_tokens if counted_tokens else 0.0
    dtype = compute_dtype(config.precision, unwrapped)
    result.extras.update(
        attention=batching.attention,
        eval_precision=eval_precision(accelerator),  # eval losses' compute (eval_precision.py)
        flops_per_token=round(per_token),
        training_flops=rows[-1].flops,  # the whole run's (all processes); None: unknown
        **run_utilisation(
            per_token * tokens, train_seconds, accelerator.device, dtype, accelerator.num_processes
        ),
    )
    return result
