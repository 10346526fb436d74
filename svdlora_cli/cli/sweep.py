"""`svdlora sweep`: the seed's rank study from one cached decomposition."""

from __future__ import annotations

from typing import Any

from ..workflows.sweep import SweepOptions
from ._groups import options_from
from ._options import JsonOpt
from ._output import emit, hooks


@options_from(SweepOptions)
def sweep(json_output: JsonOpt = False, options: Any = None) -> None:
    """Energy and error against rank per module type; with --train, final loss against rank."""
    from ..reporting.tables import sweep_table
    from ..workflows import sweep as workflow

    emit(workflow.run(options, hooks()), json_output, sweep_table)
