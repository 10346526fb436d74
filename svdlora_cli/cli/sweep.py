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
    TrainDeviceOpt,
)
from ._output import (
    emit,
    is_primary_process,
    progress,
    require,
    resolve_cache,
    train_config,
    training_progress,
)


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
    train_data: Annotated[
        str | None,
        typer.Option("--train-data", help="Training rows for --train (default: built-in)."),
    ] = None,
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
    from ..analysis.sweep import parse_ranks, rank_sweep, train_rank_study
    from ..artifacts import write_sweep_outputs
    from ..files import check_writable_dir
    from ..reporting.tables import sweep_table

    base = require(base_model, "--base-model", "base_model")
    tuned = require(teacher_model, "--teacher-model", "teacher_model")
    rank_list = parse_ranks(ranks)
    folder = check_writable_dir(output_dir or DEFAULT_OUTPUT_DIR)
    config = None
    if train:
        config = train_config(locals())
    cache = resolve_cache(cache_dir, no_cache, cache_size)
    try:
        with progress("SVD") as update:
            result = rank_sweep(
                base, tuned, cache, rank_list, include or (), exclude or (), method, update
            )
    finally:
        cache.close()
    study = None
    if config is not None:
        study = train_rank_study(
            base, result, folder / "rank_study", config, train_data, eval_data, training_progress
        )
    doc = {
        "base_model": base,
        "tuned_model": tuned,
        "ranks": [{k: v for k, v in row.items() if k != "factors"} for row in result["ranks"]],
        "cache": result["cache"],
        "study": study,
        "warnings": result["warnings"],
    }
    if not is_primary_process():  # the other ranks computed their share
        return
    write_sweep_outputs(doc, folder, {"ranks": rank_list, "method": method, "train": train})
    emit(doc, json_output, sweep_table)
