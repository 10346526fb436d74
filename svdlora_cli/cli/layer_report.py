"""`svdlora layer-report`: per-layer size and rank of dW, aggregated by type, depth and group."""

from __future__ import annotations

from typing import Any

from ..workflows.layer_report import LayerReportOptions
from ._groups import options_from
from ._options import JsonOpt
from ._output import emit, hooks


@options_from(LayerReportOptions)
def layer_report(json_output: JsonOpt = False, options: Any = None) -> None:
    """Per module: ||dW||, relative change, energy at r, rank for 90/95/99%, rank measures.

    Under torchrun the tensors are split across the processes; rank 0 writes the outputs.
    """
    from ..reporting.tables import layer_table
    from ..workflows import layer_report as workflow

    emit(workflow.run(options, hooks()), json_output, layer_table)
