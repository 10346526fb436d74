"""`svdlora train`: LoRA students from random, SVD and control inits (seed plan steps 3-4)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import (
    AnswerFieldOpt,
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
    ResumeOpt,
    SaveEveryOpt,
    SchedulerOpt,
    TeacherModelOpt,
    TrainDeviceOpt,
    TrustRemoteCodeOpt,
    WarmupOpt,
    WeightDecayOpt,
)
from ._output import emit, require, resolve_cache, train_config, training_progress


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
    base_model: Annotated[
        str | None, typer.Option("--base-model", "--base", "-b", help="Base model the LoRA adapts.")
    ] = None,
    train_data: Annotated[
        str | None,
        typer.Option("--train-data", "--data-path", help="Training rows (default: built-in set)."),
    ] = None,
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
    lora_rank: Annotated[int, typer.Option("--lora-rank", "-r", help="LoRA rank r.")] = 16,
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
    import dataclasses

    from ..data import FieldNames
    from ..files import check_writable_dir
    from ..reporting.tables import training_table
    from ..training.inits import FACTOR_INITS, parse_inits
    from ..training.student import arm_name, base_plan, svd_factors_for, train_student

    base = require(base_model, "--base-model", "base_model")
    inits = parse_inits(init)
    seed_list = _seeds(seeds)
    folder = check_writable_dir(output_dir or Path("svdlora-runs") / "training_results")
    config = train_config(locals(), seed=seed_list[0])
    targets = target_modules or ()
    factors = None
    if FACTOR_INITS & set(inits) or svd_factors:
        cache = resolve_cache(cache_dir, no_cache, cache_size)
        try:
            factors = svd_factors_for(base, lora_rank, cache, svd_factors, teacher_model, targets)
        finally:
            cache.close()
    # Every arm shares one plan (modules and ranks), so only the init differs.
    plan = base_plan(base, lora_rank, lora_alpha, targets, factors)
    arms = []
    for seed in seed_list:
        for arm_init in inits:
            name = arm_name(arm_init, seed, len(seed_list) > 1)
            with training_progress(name) as update:
                arms.append(
                    train_student(
                        base,
                        arm_init,
                        folder,
                        dataclasses.replace(config, seed=seed),
                        plan,
                        factors,
                        name,
                        train_data,
                        eval_data,
                        FieldNames(prompt_field, answer_field),
                        lora_dropout,
                        update,
                    )
                )
    doc = {
        "arms": arms,
        "plan": {
            "lora_rank": plan.rank,
            "lora_alpha": plan.alpha,
            "modules": len(plan.ranks),
            "ranks": plan.ranks,
        },
        "config": config.to_dict(),
        "output_dir": str(folder),
    }
    emit(doc, json_output, training_table)
