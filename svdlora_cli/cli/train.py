"""`svdlora train`: LoRA students from random, SVD and control inits (seed plan steps 3-4)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import (
    AnswerFieldOpt,
    BaseModelOpt,
    BatchSizeOpt,
    Bf16Opt,
    CacheDirOpt,
    CacheSizeOpt,
    EpochsOpt,
    EvalDataOpt,
    EvalEveryOpt,
    EvalLimitOpt,
    Fp16Opt,
    GradAccumOpt,
    GradCkptOpt,
    JsonOpt,
    MaxLengthOpt,
    MaxStepsOpt,
    NoCacheOpt,
    PromptFieldOpt,
    RankOpt,
    ResumeOpt,
    SaveEveryOpt,
    SchedulerOpt,
    TeacherModelOpt,
    TrainDataOpt,
    TrainDeviceOpt,
    TrustRemoteCodeOpt,
    WarmupOpt,
    WeightDecayOpt,
)
from ._output import cache_options, emit, hooks, precision, require


def _seeds(text: str) -> list[int]:
    from ..errors import InvalidOptionError

    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise InvalidOptionError(
            f"--seeds {text!r} is not a list of integers", "use e.g. --seeds 0,1,2"
        ) from exc
    if not seeds or len(set(seeds)) != len(seeds):
        raise InvalidOptionError(
            f"--seeds {text!r} must list distinct integers", "use e.g. --seeds 0,1,2"
        )
    return seeds


def train(
    base_model: BaseModelOpt = None,
    train_data: TrainDataOpt = None,
    init: Annotated[
        str,
        typer.Option(
            "--init", help="random, gaussian, svd, svd-sqrt, subspace or pissa (comma list ok)."
        ),
    ] = "random",
    svd_factors: Annotated[
        str | None,
        typer.Option("--svd-factors", help="svd_factors_rank*.safetensors from `svdlora svd`."),
    ] = None,
    teacher_model: TeacherModelOpt = None,
    rank: RankOpt = 16,
    lora_alpha: Annotated[
        float | None, typer.Option("--lora-alpha", help="LoRA alpha (default: r).")
    ] = None,
    lora_dropout: Annotated[float, typer.Option("--lora-dropout", help="LoRA dropout.")] = 0.0,
    target_modules: Annotated[
        list[str] | None,
        typer.Option("--target-modules", help="Regex of target tensors (default: svd's)."),
    ] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="One arm per seed, e.g. 0,1,2.")] = "0",
    eval_data: EvalDataOpt = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            "--output-dir", "-o", help="Folder (default: ./svdlora-runs/training_results)."
        ),
    ] = None,
    epochs: EpochsOpt = 5,
    learning_rate: Annotated[
        float, typer.Option("--learning-rate", help="AdamW learning rate.")
    ] = 2e-4,
    batch_size: BatchSizeOpt = 4,
    grad_accum: GradAccumOpt = 1,
    max_length: MaxLengthOpt = 512,
    eval_every: EvalEveryOpt = 0,
    eval_limit: EvalLimitOpt = None,
    max_steps: MaxStepsOpt = None,
    bf16: Bf16Opt = False,
    fp16: Fp16Opt = False,
    gradient_checkpointing: GradCkptOpt = False,
    device: TrainDeviceOpt = "auto",
    warmup_steps: WarmupOpt = 0,
    lr_scheduler: SchedulerOpt = "linear",
    weight_decay: WeightDecayOpt = 0.0,
    prompt_field: PromptFieldOpt = None,
    answer_field: AnswerFieldOpt = None,
    cache_dir: CacheDirOpt = None,
    cache_size: CacheSizeOpt = None,
    no_cache: NoCacheOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    save_every: SaveEveryOpt = 0,
    resume: ResumeOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Train LoRA arms on identical batches; writes final_model_{init}/, training_log_{init}.csv."""
    from ..data import FieldNames
    from ..reporting.tables import training_table
    from ..training.inits import parse_inits
    from ..training.loop import TrainConfig
    from ..workflows import train as workflow

    seed_list = _seeds(seeds)
    config = TrainConfig(
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_length=max_length,
        seed=seed_list[0],
        eval_every=eval_every,
        eval_limit=eval_limit,
        max_steps=max_steps,
        precision=precision(bf16, fp16),
        gradient_checkpointing=gradient_checkpointing,
        device=device,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        lr_scheduler=lr_scheduler,
        trust_remote_code=trust_remote_code,
        save_every=save_every,
        resume=resume,
    )
    options = workflow.TrainOptions(
        base_model=require(base_model, "--base-model", "base_model"),
        config=config,
        inits=tuple(parse_inits(init)),
        seeds=tuple(seed_list),
        rank=require(rank, "--rank", "rank"),
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=tuple(target_modules or ()),
        svd_factors=svd_factors,
        teacher_model=teacher_model,
        train_data=train_data,
        eval_data=eval_data,
        fields=FieldNames(prompt_field, answer_field),
        output_dir=output_dir or Path("svdlora-runs") / "training_results",
        cache=cache_options(cache_dir, no_cache, cache_size),
    )
    emit(workflow.run(options, hooks()), json_output, training_table)
