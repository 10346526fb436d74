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
from ._output import emit, is_primary_process, progress, resolve_cache


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
    """Per arm: start/end loss, steps to target, AUC, gap recovered, distance to the teacher."""
    from ..analysis.compare import (
        attach_accuracy,
        attach_model_figures,
        compare_runs,
        curves_for_plot,
        find_logs,
    )
    from ..artifacts import write_compare_outputs
    from ..errors import InvalidOptionError
    from ..reporting.tables import compare_table

    if run_dir is None and not log:
        run_dir = output_dir
    if run_dir is None and not log:
        raise InvalidOptionError(
            "no run folder given",
            "pass the folder `svdlora train` wrote to, or --log FILE (repeatable)",
        )
    if eval_limit < 1:
        raise InvalidOptionError(
            f"--eval-limit must be at least 1, got {eval_limit}", "use e.g. --eval-limit 50"
        )
    runs = find_logs(run_dir, log or (), teacher_model)
    doc = compare_runs(runs, target_loss)
    teacher_dir = teacher_model or next(
        (str(r.model_dir) for r in runs if r.is_teacher and r.model_dir), None
    )
    base = base_model or next(
        (r.record.get("base_model") for r in runs if r.record.get("base_model")), None
    )
    cache = resolve_cache(cache_dir, no_cache)
    try:
        doc["warnings"] = attach_model_figures(doc, runs, base, teacher_dir, cache)
    finally:
        cache.close()
    if generate:
        if base is None:
            raise InvalidOptionError("--generate needs the base model", "pass --base-model")
        with progress("generate") as update:
            attach_accuracy(
                doc, runs, base, teacher_dir, eval_data, eval_limit, max_new_tokens, update
            )
    folder = output_dir or (run_dir if run_dir is not None else Path(log[0]).parent)  # type: ignore[index]
    options = {
        "target_loss": target_loss,
        "generate": generate,
        "eval_limit": eval_limit,
        "log_y": log_y,
    }
    if not is_primary_process():  # the other ranks computed their share
        return
    write_compare_outputs(doc, curves_for_plot(runs), folder, log_y, options)
    emit(doc, json_output, compare_table)
