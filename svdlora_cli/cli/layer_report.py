"""`svdlora layer-report`: per-layer size and rank of dW, aggregated by type, depth and group."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ._groups import pair_options
from ._options import (
    JsonOpt,
    RankOpt,
)
from ._output import emit, hooks, require


@pair_options()
def layer_report(
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
    json_output: JsonOpt = False,
    pair: Any = None,
) -> None:
    """Per module: ||dW||, relative change, energy at r, rank for 90/95/99%, rank measures.

    Under torchrun the tensors are split across the processes; rank 0 writes the outputs.
    """
    from ..reporting.tables import layer_table
    from ..workflows import layer_report as workflow

    options = workflow.LayerReportOptions(
        **pair,
        rank=require(rank, "--rank", "rank"),
        sort=sort,
        intruders=intruders,
        intruder_k=intruder_k,
        intruder_threshold=intruder_threshold,
        method=method,
    )
    emit(workflow.run(options, hooks()), json_output, layer_table)
