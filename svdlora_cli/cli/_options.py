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
NoCacheOpt = Annotated[
    bool, typer.Option("--no-cache", help="Neither read nor write the artifact cache.")
]
BaseModelOpt = Annotated[
    str | None,
    typer.Option(
        "--base-model", "--base", "-b", help="Base model: local HF folder or cached hub id."
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
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")]

DEFAULT_OUTPUT_DIR = Path("svdlora-out")
