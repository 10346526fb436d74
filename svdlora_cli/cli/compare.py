"""`svdlora compare`: the arms' loss curves, the seed's table and, optionally, accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import (
    BaseModelOpt,
    CacheDirOpt,
    EvalDataOpt,
    JsonOpt,
    NoCacheOpt,
    OutputDirOpt,
    TeacherModelOpt,
)
from ._output import cache_options, emit, hooks


def compare(
    run_dir: Annotated[
        Path | None,
        typer.Argument(help="Folder with training_log_*.csv (searched two levels deep)."),
    ] = None,
    log: Annotated[
        list[Path] | None, typer.Option("--log", help="Extra training log (repeatable).")
    ] = None,
    target_loss: Annotated[
        float | None,
        typer.Option("--target-loss", help="Loss to reach (default: 1.1 x teacher's final)."),
    ] = None,
    base_model: BaseModelOpt = None,
    teacher_model: TeacherModelOpt = None,
    generate: Annotated[
        bool, typer.Option("--generate", help="Greedy-decode the eval set; exact-match accuracy.")
    ] = False,
    eval_limit: Annotated[
        int, typer.Option("--eval-limit", help="Eval problems for --generate.")
    ] = 50,
    eval_data: EvalDataOpt = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="Generation budget per problem.")
    ] = 256,
    log_y: Annotated[
        bool, typer.Option("--log-y", help="Log-scale loss axis in the plot.")
    ] = False,
    output_dir: OutputDirOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Per arm: start/end loss, steps to target, AUC, gap recovered, distance to the teacher.

    Only comparable runs pool, each once; the rest is set apart with a warning.
    """
    from ..reporting.tables import compare_table
    from ..workflows import compare as workflow

    options = workflow.CompareOptions(
        run_dir=run_dir if run_dir is not None or log else output_dir,
        logs=tuple(log or ()),
        target_loss=target_loss,
        base_model=base_model,
        teacher_model=teacher_model,
        generate=generate,
        eval_limit=eval_limit,
        eval_data=eval_data,
        max_new_tokens=max_new_tokens,
        log_y=log_y,
        output_dir=output_dir,
        cache=cache_options(cache_dir, no_cache),
    )
    emit(workflow.run(options, hooks()), json_output, compare_table)
