"""`svdlora delta`: how much each weight changed, and what a LoRA cannot capture."""

from __future__ import annotations

from typing import Any

from ..workflows.delta import DeltaOptions
from ._groups import options_from
from ._options import JsonOpt
from ._output import emit, hooks


@options_from(DeltaOptions)
def delta(json_output: JsonOpt = False, options: Any = None) -> None:
    """Per-target ||W||, ||dW||, relative change and max |dW|, with untargeted changes.

    Under torchrun the tensors are split across the processes; rank 0 writes the outputs.
    """
    from ..reporting.tables import delta_table
    from ..workflows import delta as workflow

    emit(workflow.run(options, hooks()), json_output, delta_table)
