"""Options shared by several commands, defined once as Annotated aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout (logs go to stderr).")
]
OutputDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--output-dir", "-o", help="Folder for this command's files (default: ./svdlora-out)."
    ),
]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        envvar="SVDLORA_CACHE_DIR",
        help="Artifact cache folder (default: ~/.cache/svdlora).",
    ),
]
CacheSizeOpt = Annotated[
    str | None,
    typer.Option(
        "--cache-size",
        envvar="SVDLORA_CACHE_SIZE",
        help="Cap on cached payloads (e.g. 2GB); least recently used go first.",
    ),
]
NoCacheOpt = Annotated[
    bool, typer.Option("--no-cache", help="Neither read nor write the artifact cache.")
]
BaseModelOpt = Annotated[
    str | None,
    typer.Option(
        "--base-model",
        "--base",
        "-b",
        "--model-name",
        "-m",
        help="Base model: local HF folder or cached hub id (--model-name: the seed's name).",
    ),
]
TeacherModelOpt = Annotated[
    str | None,
    typer.Option(
        "--teacher-model",
        "--tuned",
        "-t",
        help="Fully fine-tuned model (the teacher) of the same base.",
    ),
]
IncludeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--include", help="Regex of tensor names to target (repeatable); replaces the default."
    ),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option("--exclude", help="Regex of tensor names to leave out (repeatable)."),
]
RankOpt = Annotated[
    int | None,
    typer.Option("--rank", "-r", "--lora-rank", help="Rank r (LoRA rank, SVD truncation rank)."),
]
TrainDataOpt = Annotated[
    str | None,
    typer.Option(
        "--train-data",
        "--data-path",
        help="Training rows (default: built-in set; --data-path: the seed's name).",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")]
DtypePolicyOpt = Annotated[
    str,
    typer.Option(
        "--dtype-policy",
        help="When base and teacher dtypes differ: round (subtract against the base cast to "
        "the teacher's dtype, the grid the fine-tune started from) or raw (as stored).",
    ),
]


# Training options shared by train-teacher and train (the seed's flag names).
EpochsOpt = Annotated[int, typer.Option("--epochs", help="Passes over the training set.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Examples per micro-batch.")]
TokensPerStepOpt = Annotated[
    int | None,
    typer.Option(
        "--tokens-per-step",
        help="Size steps by real tokens instead of rows: each step takes rows in the seed's "
        "order until about N tokens, cut into --grad-accum micro-batches (replaces "
        "--batch-size; fills a GPU, e.g. 16384).",
    ),
]
GradAccumOpt = Annotated[
    int, typer.Option("--grad-accum", help="Micro-batches per optimizer step.")
]
MaxLengthOpt = Annotated[
    int, typer.Option("--max-length", help="Tokens per example (longer rows are cut).")
]
SeedOpt = Annotated[
    int, typer.Option("--seed", help="Seed of the batch order and of random inits.")
]
EvalDataOpt = Annotated[
    str | None,
    typer.Option(
        "--eval-data",
        help="Held-out rows (default: built-in eval set with the built-in train set).",
    ),
]
EvalEveryOpt = Annotated[
    int, typer.Option("--eval-every", help="Eval loss every N steps (0: start and end).")
]
EvalLimitOpt = Annotated[
    int | None, typer.Option("--eval-limit", help="Use only the first N eval rows.")
]
MaxStepsOpt = Annotated[
    int | None, typer.Option("--max-steps", help="Stop after N optimizer steps.")
]
Bf16Opt = Annotated[
    bool,
    typer.Option(
        "--bf16",
        help="bf16 mixed precision: students keep the frozen base in bf16 and their LoRA "
        "weights and optimizer state in fp32; the teacher keeps fp32 master weights.",
    ),
]
Fp16Opt = Annotated[bool, typer.Option("--fp16", help="fp16 mixed precision (CUDA only).")]
GradCkptOpt = Annotated[
    bool, typer.Option("--gradient-checkpointing", help="Trade compute for memory.")
]
PackingOpt = Annotated[
    bool,
    typer.Option(
        "--packing/--no-packing",
        help="Lay each micro-batch's rows end to end (no padding; attention stays within "
        "each row). Checked against padded batches before training.",
    ),
]
TrainDeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
WarmupOpt = Annotated[int, typer.Option("--warmup-steps", help="Linear LR warmup steps.")]
SchedulerOpt = Annotated[str, typer.Option("--lr-scheduler", help="linear, cosine or constant.")]
WeightDecayOpt = Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")]
PromptFieldOpt = Annotated[
    str | None, typer.Option("--prompt-field", help="Row key holding the prompt.")
]
AnswerFieldOpt = Annotated[
    str | None, typer.Option("--answer-field", help="Row key holding the answer.")
]
TrustRemoteCodeOpt = Annotated[
    bool, typer.Option("--trust-remote-code", help="Allow models that ship their own Python code.")
]
SaveEveryOpt = Annotated[
    int, typer.Option("--save-every", help="Checkpoint every N steps (0: never) for --resume.")
]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue from the last checkpoint of an interrupted run.")
]
