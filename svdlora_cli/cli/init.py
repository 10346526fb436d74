"""`svdlora init`: write the workspace file so later commands need no model flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import (
    BaseModelOpt,
    CacheDirOpt,
    ExcludeOpt,
    IncludeOpt,
    JsonOpt,
    OutputDirOpt,
    TeacherModelOpt,
)
from ._output import emit, warn


def init(
    base_model: BaseModelOpt = None,
    teacher_model: TeacherModelOpt = None,
    output_dir: OutputDirOpt = None,
    cache_dir: CacheDirOpt = None,
    rank: Annotated[int | None, typer.Option("--rank", "-r", help="Default LoRA/SVD rank.")] = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    file: Annotated[Path, typer.Option("--file", help="Workspace file to write.")] = Path(
        "svdlora.toml"
    ),
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing workspace file.")
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """Write svdlora.toml with the models and defaults of this experiment."""
    from ..errors import ModelNotFoundError, SvdloraError
    from ..models.refs import resolve_model_path
    from ..workspace import write_workspace

    if base_model is None:
        raise SvdloraError(
            "no base model given", "pass --base-model (a local HF folder or cached hub id)"
        )
    resolved = {}
    for key, ref in (("base_model", base_model), ("teacher_model", teacher_model)):
        if ref is None:
            continue
        try:
            resolve_model_path(ref)
            resolved[key] = True
        except ModelNotFoundError:
            resolved[key] = False
            warn(f"{key} {ref} does not exist yet; later commands will need it")
    values = {
        "base_model": base_model,
        "teacher_model": teacher_model,
        "output_dir": str(output_dir) if output_dir else None,
        "cache_dir": str(cache_dir) if cache_dir else None,
        "rank": rank,
        "include": include or None,
        "exclude": exclude or None,
    }
    path = write_workspace(file, values, overwrite=force)
    doc = {
        "workspace": str(path.resolve()),
        "values": {k: v for k, v in values.items() if v is not None},
        "models_found": resolved,
    }
    emit(
        doc,
        json_output,
        lambda d: (
            f"Wrote {d['workspace']}\n" + "\n".join(f"  {k} = {v}" for k, v in d["values"].items())
        ),
    )
