"""`svdlora train-teacher`: full-parameter SFT of the base model (step 1 of the seed plan)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import (
    AnswerFieldOpt,
    BatchSizeOpt,
    Bf16Opt,
    CacheDirOpt,
    EpochsOpt,
    EvalDataOpt,
    EvalEveryOpt,
    EvalLimitOpt,
    Fp16Opt,
    GradAccumOpt,
    GradCkptOpt,
    JsonOpt,
    MaxLengthOpt,
    MaxStepsOpt,
    PromptFieldOpt,
    ResumeOpt,
    SaveEveryOpt,
    SchedulerOpt,
    SeedOpt,
    TrainDeviceOpt,
    TrustRemoteCodeOpt,
    WarmupOpt,
    WeightDecayOpt,
)
from ._output import emit, is_primary_process, require, train_config, training_progress


def train_teacher(
    ctx: typer.Context,
    model_name: Annotated[
        str | None,
        typer.Option("--model-name", "--base-model", "-m", help="Base model to fine-tune."),
    ] = None,
    data_path: Annotated[
        str | None,
        typer.Option("--data-path", "--train-data", help="Training rows (default: built-in set)."),
    ] = None,
    eval_data: EvalDataOpt = None,
    output_dir: Annotated[
        Path | None,
        typer.Option("--output-dir", "-o", help="Run folder (default: ./svdlora-runs/teacher)."),
    ] = None,
    epochs: EpochsOpt = 5,
    learning_rate: Annotated[
        float, typer.Option("--learning-rate", help="AdamW learning rate.")
    ] = 2e-5,
    batch_size: BatchSizeOpt = 4,
    grad_accum: GradAccumOpt = 1,
    max_length: MaxLengthOpt = 512,
    seed: SeedOpt = 0,
    eval_every: EvalEveryOpt = 0,
    eval_limit: EvalLimitOpt = None,
    max_steps: MaxStepsOpt = None,
    bf16: Bf16Opt = False,
    fp16: Fp16Opt = False,
    gradient_checkpointing: GradCkptOpt = False,
    device: TrainDeviceOpt = "auto",
    warmup_steps: WarmupOpt = 0,
    lr_scheduler: SchedulerOpt = "linear",
    weight_decay: WeightDecayOpt = 0.0,
    prompt_field: PromptFieldOpt = None,
    answer_field: AnswerFieldOpt = None,
    workspace: Annotated[
        bool,
        typer.Option("--workspace/--no-workspace", help="Record base and teacher in svdlora.toml."),
    ] = True,
    cache_dir: CacheDirOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    save_every: SaveEveryOpt = 0,
    resume: ResumeOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Fine-tune every parameter; writes final_model/ and training_log_teacher.csv."""
    from ..data import FieldNames
    from ..files import check_writable_dir
    from ..reporting.tables import training_table
    from ..training.teacher import train_teacher as run
    from ..workspace import WORKSPACE_FILE, update_workspace

    model = require(model_name, "--model-name", "model_name")
    folder = check_writable_dir(output_dir or Path("svdlora-runs") / "teacher")
    config = train_config(locals())
    with training_progress("teacher") as update:
        summary = run(
            model,
            folder,
            config,
            data_path,
            eval_data,
            FieldNames(prompt_field, answer_field),
            update,
        )
    doc = {"arms": [summary], "config": config.to_dict(), "output_dir": str(folder)}
    if workspace and summary["artifacts"] and is_primary_process():
        path = (ctx.obj or {}).get("workspace") or Path(WORKSPACE_FILE)
        update_workspace(
            Path(path),
            {
                "base_model": model,
                "teacher_model": summary["artifacts"]["final_model"],
                "data_path": data_path,
                "train_data": data_path,
                "eval_data": eval_data,
            },
        )
        doc["workspace"] = str(Path(path).resolve())
    emit(doc, json_output, training_table)
