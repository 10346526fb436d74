"""`svdlora demo`: the whole seed experiment on a real pretrained model, in one command."""

from __future__ import annotations

from typing import Any

from ..workflows.demo import DemoSettings
from ._groups import options_from
from ._options import JsonOpt
from ._output import emit, hooks


# Every option defaults to the quick run's or the protocol's value (DemoSettings.chosen).
@options_from(DemoSettings, optional=True, build=DemoSettings.chosen)
def demo(json_output: JsonOpt = False, options: Any = None) -> None:
    """Teacher SFT, dW, SVD, a grid of students, the paired verdict and the layer report."""
    from ..reporting.tables import demo_summary
    from ..workflows import demo as workflow

    emit(workflow.run(options, hooks(announce=True)), json_output, demo_summary)
