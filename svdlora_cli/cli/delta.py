"""`svdlora delta`: how much each weight changed, and what a LoRA cannot capture."""

from __future__ import annotations

from typing import Any

from ._groups import pair_options
from ._options import JsonOpt
from ._output import emit, hooks


@pair_options()
def delta(json_output: JsonOpt = False, pair: Any = None) -> None:
    """Per-target ||W||, ||dW||, relative change and max |dW|, with untargeted changes.

    Under torchrun the tensors are split across the processes; rank 0 writes the outputs.
    """
    from ..reporting.tables import delta_table
    from ..workflows import delta as workflow

    emit(workflow.run(workflow.DeltaOptions(**pair), hooks()), json_output, delta_table)
