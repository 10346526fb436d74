"""`svdlora sweep`: the seed's rank study from one cached decomposition."""

from __future__ import annotations

from typing import Annotated

import typer

from ._options import (
    DEFAULT_OUTPUT_DIR,
    BaseModelOpt,
    BatchSizeOpt,
    CacheDirOpt,
    CacheSizeOpt,
    EpochsOpt,
    EvalDataOpt,
    EvalLimitOpt,
    ExcludeOpt,
    IncludeOpt,
    JsonOpt,
    MaxLengthOpt,
    MaxStepsOpt,
    NoCacheOpt,
    OutputDirOpt,
    SeedOpt,
    TeacherModelOpt,
    TrainDataOpt,
    TrainDeviceOpt,
)
from ._output import cache_options, emit, hooks, require


def sweep(
    base_model: BaseModelOpt = None,
    teacher_model: TeacherModelOpt = None,
    ranks: Annotated[str, typer.Option("--ranks", help="Comma list of ranks.")] = "4,8,16,32,64",
    method: Annotated[str, typer.Option("--method", help="auto, exact or randomized.")] = "auto",
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    train: Annotated[
        bool,
        typer.Option("--train", help="Also train an SVD-init student per rank and a random one."),
    ] = False,
    train_data: TrainDataOpt = None,
    eval_data: EvalDataOpt = None,
    epochs: EpochsOpt = 1,
    learning_rate: Annotated[
        float, typer.Option("--learning-rate", help="AdamW learning rate.")
    ] = 2e-4,
    batch_size: BatchSizeOpt = 4,
    max_length: MaxLengthOpt = 512,
    max_steps: MaxStepsOpt = None,
    eval_limit: EvalLimitOpt = None,
    seed: SeedOpt = 0,
    device: TrainDeviceOpt = "auto",
    output_dir: OutputDirOpt = None,
    cache_dir: CacheDirOpt = None,
    cache_size: CacheSizeOpt = None,
    no_cache: NoCacheOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Energy and error against rank per module type; with --train, final loss against rank."""
    from ..analysis.sweep import parse_ranks
    from ..reporting.tables import sweep_table
    from ..training.loop import TrainConfig
    from ..workflows import sweep as workflow

    config = None
    if train:
        config = TrainConfig(
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            max_length=max_length,
            seed=seed,
            eval_limit=eval_limit,
            max_steps=max_steps,
            device=device,
        )
    options = workflow.SweepOptions(
        base_model=require(base_model, "--base-model", "base_model"),
        teacher_model=require(teacher_model, "--teacher-model", "teacher_model"),
        ranks=tuple(parse_ranks(ranks)),
        method=method,
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
        train=config,
        train_data=train_data,
        eval_data=eval_data,
        output_dir=output_dir or DEFAULT_OUTPUT_DIR,
        cache=cache_options(cache_dir, no_cache, cache_size),
    )
    emit(workflow.run(options, hooks()), json_output, sweep_table)
