"""`svdlora layer-report`: per-layer size and rank of dW, aggregated by type, depth and group."""

from __future__ import annotations

from typing import Annotated

import typer

from ._options import (
    DEFAULT_OUTPUT_DIR,
    BaseModelOpt,
    CacheDirOpt,
    CacheSizeOpt,
    DtypePolicyOpt,
    ExcludeOpt,
    IncludeOpt,
    JsonOpt,
    NoCacheOpt,
    OutputDirOpt,
    RankOpt,
    TeacherModelOpt,
)
from ._output import cache_options, emit, hooks, require


def layer_report(
    base_model: BaseModelOpt = None,
    teacher_model: TeacherModelOpt = None,
    rank: RankOpt = 16,
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
    dtype_policy: DtypePolicyOpt = "round",
    output_dir: OutputDirOpt = None,
    cache_dir: CacheDirOpt = None,
    cache_size: CacheSizeOpt = None,
    no_cache: NoCacheOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Per module: ||dW||, relative change, energy at r, rank for 90/95/99%, rank measures.

    Under torchrun the tensors are split across the processes; rank 0 writes the outputs.
    """
    from ..reporting.tables import layer_table
    from ..workflows import layer_report as workflow

    options = workflow.LayerReportOptions(
        base_model=require(base_model, "--base-model", "base_model"),
        teacher_model=require(teacher_model, "--teacher-model", "teacher_model"),
        rank=require(rank, "--rank", "rank"),
        sort=sort,
        intruders=intruders,
        intruder_k=intruder_k,
        intruder_threshold=intruder_threshold,
        method=method,
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
        dtype_policy=dtype_policy,
        output_dir=output_dir or DEFAULT_OUTPUT_DIR,
        cache=cache_options(cache_dir, no_cache, cache_size),
    )
    emit(workflow.run(options, hooks()), json_output, layer_table)
