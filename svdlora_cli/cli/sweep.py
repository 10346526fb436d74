"""`svdlora sweep`: the seed's rank study from one cached decomposition."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import typer

from ._options import (
    DEFAULT_OUTPUT_DIR,
    BaseModelOpt,
    CacheDirOpt,
    CacheSizeOpt,
    DtypePolicyOpt,
    EvalDataOpt,
    ExcludeOpt,
    IncludeOpt,
    JsonOpt,
    NoCacheOpt,
    OutputDirOpt,
    SeedOpt,
    TeacherModelOpt,
    TrainDataOpt,
)
from ._output import cache_options, emit, hooks, require
from ._training import with_training_options


@with_training_options(learning_rate=2e-4, epochs=1)
def sweep(
    base_model: BaseModelOpt = None,
    teacher_model: TeacherModelOpt = None,
    ranks: Annotated[str, typer.Option("--ranks", help="Comma list of ranks.")] = "4,8,16,32,64",
    method: Annotated[str, typer.Option("--method", help="auto, exact or randomized.")] = "auto",
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    dtype_policy: DtypePolicyOpt = "round",
    train: Annotated[
        bool,
        typer.Option("--train", help="Also train an SVD-init student per rank and a random one."),
    ] = False,
    train_data: TrainDataOpt = None,
    eval_data: EvalDataOpt = None,
    seed: SeedOpt = 0,
    output_dir: OutputDirOpt = None,
    cache_dir: CacheDirOpt = None,
    cache_size: CacheSizeOpt = None,
    no_cache: NoCacheOpt = False,
    json_output: JsonOpt = False,
    config: Any = None,  # a TrainConfig built from the training options
) -> None:
    """Energy and error against rank per module type; with --train, final loss against rank."""
    from ..analysis.sweep import parse_ranks
    from ..reporting.tables import sweep_table
    from ..workflows import sweep as workflow

    options = workflow.SweepOptions(
        base_model=require(base_model, "--base-model", "base_model"),
        teacher_model=require(teacher_model, "--teacher-model", "teacher_model"),
        ranks=tuple(parse_ranks(ranks)),
        method=method,
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
        dtype_policy=dtype_policy,
        train=dataclasses.replace(config, seed=seed) if train else None,
        train_data=train_data,
        eval_data=eval_data,
        output_dir=output_dir or DEFAULT_OUTPUT_DIR,
        cache=cache_options(cache_dir, no_cache, cache_size),
    )
    emit(workflow.run(options, hooks()), json_output, sweep_table)
