"""`svdlora svd`: rank-r decomposition of every target's dW, its spectra and a PEFT adapter."""

from __future__ import annotations

from typing import Any

from ..workflows.svd import SvdOptions
from ._groups import options_from
from ._options import JsonOpt
from ._output import emit, hooks


@options_from(SvdOptions)
def svd(json_output: JsonOpt = False, options: Any = None) -> None:
    """Decompose dW per target; write factors, a PEFT adapter, spectra JSON, report and plot.

    Under torchrun the tensors are split across the processes; rank 0 writes the outputs.
    """
    from ..reporting.tables import svd_table
    from ..workflows import svd as workflow

    emit(workflow.run(options, hooks()), json_output, svd_table)
