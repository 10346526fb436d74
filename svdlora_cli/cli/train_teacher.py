"""`svdlora train-teacher`: full-parameter SFT of the base model (step 1 of the seed plan)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from ._groups import training_options
from ._options import (
    AnswerFieldOpt,
    BaseModelOpt,
    CacheDirOpt,
    EvalDataOpt,
    JsonOpt,
    PromptFieldOpt,
    SeedOpt,
    TrainDataOpt,
)
from ._output import emit, hooks, require


@training_options(learning_rate=2e-5)
def train_teacher(
    ctx: typer.Context,
    base_model: BaseModelOpt = None,
    train_data: TrainDataOpt = None,
    eval_data: EvalDataOpt = None,
    output_dir: Annotated[
        Path | None,
        typer.Option("--output-dir", "-o", help="Run folder (default: ./svdlora-runs/teacher)."),
    ] = None,
    seed: SeedOpt = 0,
    prompt_field: PromptFieldOpt = None,
    answer_field: AnswerFieldOpt = None,
    workspace: Annotated[
        bool,
        typer.Option("--workspace/--no-workspace", help="Record base and teacher in svdlora.toml."),
    ] = True,
    cache_dir: CacheDirOpt = None,
    json_output: JsonOpt = False,
    config: Any = None,  # a TrainConfig built from the training options
) -> None:
    """Fine-tune every parameter; writes final_model/ and training_log_teacher.csv."""
    from ..data import FieldNames
    from ..reporting.tables import training_table
    from ..workflows import train_teacher as workflow
    from ..workspace import WORKSPACE_FILE

    options = workflow.TeacherOptions(
        base_model=require(base_model, "--base-model", "base_model"),
        config=dataclasses.replace(config, seed=seed),
        train_data=train_data,
        eval_data=eval_data,
        fields=FieldNames(prompt_field, answer_field),
        output_dir=output_dir or Path("svdlora-runs") / "teacher",
        workspace=Path((ctx.obj or {}).get("workspace") or WORKSPACE_FILE) if workspace else None,
    )
    emit(workflow.run(options, hooks()), json_output, training_table)
