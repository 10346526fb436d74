"""`svdlora train-teacher`: full-parameter SFT of the base model (step 1 of the seed plan)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import (
    AnswerFieldOpt,
    BaseModelOpt,
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
    TrainDataOpt,
    TrainDeviceOpt,
    TrustRemoteCodeOpt,
    WarmupOpt,
    WeightDecayOpt,
)
from ._output import emit, hooks, precision, require


def train_teacher(
    ctx: typer.Context,
    base_model: BaseModelOpt = None,
    train_data: TrainDataOpt = None,
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
    from ..reporting.tables import training_table
    from ..training.loop import TrainConfig
    from ..workflows import train_teacher as workflow
    from ..workspace import WORKSPACE_FILE

    config = TrainConfig(
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_length=max_length,
        seed=seed,
        eval_every=eval_every,
        eval_limit=eval_limit,
        max_steps=max_steps,
        precision=precision(bf16, fp16),
        gradient_checkpointing=gradient_checkpointing,
        device=device,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        lr_scheduler=lr_scheduler,
        trust_remote_code=trust_remote_code,
        save_every=save_every,
        resume=resume,
    )
    options = workflow.TeacherOptions(
        base_model=require(base_model, "--base-model", "base_model"),
        config=config,
        train_data=train_data,
        eval_data=eval_data,
        fields=FieldNames(prompt_field, answer_field),
        output_dir=output_dir or Path("svdlora-runs") / "teacher",
        workspace=Path((ctx.obj or {}).get("workspace") or WORKSPACE_FILE) if workspace else None,
    )
    emit(workflow.run(options, hooks()), json_output, training_table)
