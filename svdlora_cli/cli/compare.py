"""`svdlora compare`: the arms' loss curves, the seed's table and, optionally, accuracy."""

from __future__ import annotations

from typing import Any

from ..workflows.compare import CompareOptions
from ._groups import options_from
from ._options import JsonOpt
from ._output import emit, hooks


@options_from(CompareOptions)
def compare(json_output: JsonOpt = False, options: Any = None) -> None:
    """Per arm: start/end loss, steps to target, AUC, gap recovered, distance to the teacher.

    Only comparable runs pool, each once; the rest is set apart with a warning.
    """
    from ..reporting.tables import compare_table
    from ..workflows import compare as workflow

    emit(workflow.run(options, hooks()), json_output, compare_table)
