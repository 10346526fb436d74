"""The `init` step: write the workspace file, so that later commands need no model flags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .common import Document
from .flags import option
from .vocabulary import BASE_MODEL, CACHE_DIR, EXCLUDE, INCLUDE, OUTPUT_DIR, RANK, TEACHER_MODEL


@dataclass(frozen=True)
class InitOptions:
    """Everything `svdlora init` takes: the workspace's values, and where to write them."""

    base_model: str = BASE_MODEL.field()
    teacher_model: str | None = TEACHER_MODEL.field(None)
    output_dir: Path | None = OUTPUT_DIR.field(
        None, help="Default folder of the commands' files (default: ./svdlora-out)."
    )
    cache_dir: Path | None = CACHE_DIR.field(None)
    rank: int | None = RANK.field(None, help="Default rank r: the LoRA and SVD truncation rank.")
    include: tuple[str, ...] = INCLUDE.field(())
    exclude: tuple[str, ...] = EXCLUDE.field(())
    file: Path = option(Path("svdlora.toml"), help="Workspace file to write.")
    force: bool = option(False, help="Replace an existing workspace file.")


def run(options: InitOptions) -> Document:
    """svdlora.toml with the given values; a model that does not exist yet is a warning."""
    from ..errors import ModelNotFoundError
    from ..models.refs import resolve_model_path
    from ..workspace import write_workspace

    found, warnings = {}, []
    for key in ("base_model", "teacher_model"):
        ref = getattr(options, key)
        if ref is None:
            continue
        try:
            resolve_model_path(ref)
            found[key] = True
        except ModelNotFoundError:
            found[key] = False
            warnings.append(f"{key} {ref} does not exist yet; later commands will need it")
    values = {
        "base_model": options.base_model,
        "teacher_model": options.teacher_model,
        "output_dir": str(options.output_dir) if options.output_dir else None,
        "cache_dir": str(options.cache_dir) if options.cache_dir else None,
        "rank": options.rank,
        "include": list(options.include) or None,
        "exclude": list(options.exclude) or None,
    }
    path = write_workspace(options.file, values, overwrite=options.force)
    return {
        "workspace": str(path.resolve()),
        "values": {k: v for k, v in values.items() if v is not None},
        "models_found": found,
        "warnings": warnings,
    }
