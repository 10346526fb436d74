"""`svdlora layer-report`: per-layer size and rank of dW, aggregated by type, depth and group."""

from __future__ import annotations

from typing import Annotated

import typer

from ._options import (
    DEFAULT_OUTPUT_DIR,
    BaseModelOpt,
    CacheDirOpt,
    CacheSizeOpt,
    ExcludeOpt,
    IncludeOpt,
    JsonOpt,
    NoCacheOpt,
    OutputDirOpt,
    TeacherModelOpt,
)
from ._output import emit, is_primary_process, progress, require, resolve_cache


def layer_report(
    base_model: BaseModelOpt = None,
    teacher_model: TeacherModelOpt = None,
    rank: Annotated[
        int, typer.Option("--rank", "-r", help="Rank at which energy is reported.")
    ] = 16,
    sort: Annotated[
        str,
        typer.Option(
            "--sort",
            help="layer, name, delta_norm, rel_change, energy, rank_90, effective_rank or share.",
        ),
    ] = "layer",
    intruders: Annotated[
        bool, typer.Option("--intruders", help="Count intruder dimensions (costly).")
    ] = False,
    intruder_k: Annotated[
        int, typer.Option("--intruder-k", help="Top-k tuned singular vectors checked.")
    ] = 10,
    intruder_threshold: Annotated[
        float, typer.Option("--intruder-threshold", help="Max |cos| below which a vector intrudes.")
    ] = 0.5,
    method: Annotated[str, typer.Option("--method", help="auto, exact or randomized.")] = "auto",
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    output_dir: OutputDirOpt = None,
    cache_dir: CacheDirOpt = None,
    cache_size: CacheSizeOpt = None,
    no_cache: NoCacheOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Per module: ||dW||, relative change, energy at r, rank for 90/95/99%, rank measures.

    Under torchrun the tensors are split across the processes; rank 0 writes the outputs.
    """
    from ..analysis.layers import layer_report as run
    from ..artifacts import write_layer_outputs
    from ..files import check_writable_dir
    from ..reporting.tables import layer_table

    base = require(base_model, "--base-model", "base_model")
    tuned = require(teacher_model, "--teacher-model", "teacher_model")
    folder = check_writable_dir(output_dir or DEFAULT_OUTPUT_DIR)
    cache = resolve_cache(cache_dir, no_cache, cache_size)
    try:
        with progress("layers") as update:
            doc = run(
                base,
                tuned,
                cache,
                rank,
                include or (),
                exclude or (),
                method,
                sort,
                intruders,
                intruder_k,
                intruder_threshold,
                update,
            )
    finally:
        cache.close()
    doc = {"base_model": base, "tuned_model": tuned, **doc}
    options = {"rank": rank, "sort": sort, "intruders": intruders, "method": method}
    if not is_primary_process():  # the other ranks computed their share
        return
    write_layer_outputs(doc, folder, options)
    emit(doc, json_output, layer_table)
