"""`svdlora init`: write the workspace file so later commands need no model flags."""

from __future__ import annotations

from typing import Any

from ..workflows.init import InitOptions
from ._groups import options_from
from ._options import JsonOpt
from ._output import emit


@options_from(InitOptions)
def init(json_output: JsonOpt = False, options: Any = None) -> None:
    """Write svdlora.toml with the models and defaults of this experiment."""
    from ..workflows import init as workflow

    emit(
        workflow.run(options),
        json_output,
        lambda d: (
            f"Wrote {d['workspace']}\n" + "\n".join(f"  {k} = {v}" for k, v in d["values"].items())
        ),
    )
