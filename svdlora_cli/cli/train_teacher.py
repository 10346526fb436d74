"""`svdlora train-teacher`: full-parameter SFT of the base model (step 1 of the seed plan)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from ..workflows.train_teacher import TeacherOptions
from ._groups import options_from
from ._options import JsonOpt
from ._output import emit, hooks


@options_from(TeacherOptions)
def train_teacher(
    ctx: typer.Context,
    workspace: Annotated[
        bool,
        typer.Option("--workspace/--no-workspace", help="Record base and teacher in svdlora.toml."),
    ] = True,
    json_output: JsonOpt = False,
    options: Any = None,
) -> None:
    """Fine-tune every parameter; writes final_model/ and training_log_teacher.csv."""
    from ..reporting.tables import training_table
    from ..workflows import train_teacher as workflow
    from ..workspace import WORKSPACE_FILE

    file = Path((ctx.obj or {}).get("workspace") or WORKSPACE_FILE) if workspace else None
    options = dataclasses.replace(options, workspace=file)
    emit(workflow.run(options, hooks()), json_output, training_table)
