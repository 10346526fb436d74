"""Model references: a local folder, a built-in model name, or a hub id in the local HF cache."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelNotFoundError
from .formats import INDEX_PATTERNS, WEIGHT_PATTERNS


def resolve_model_path(ref: str | os.PathLike[str]) -> Path:
    """A local folder, a built-in name (smollm2-135m, tiny), or a hub id (optionally
    `id@revision`) already in the local HF cache."""
    text = str(ref)
    from .builtin import is_builtin, resolve_builtin

    if is_builtin(text) and not Path(text).exists():
        return resolve_builtin(text)
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise ModelNotFoundError(
            f"model ref {text} is a file, not a model folder",
            "pass the folder that holds config.json and the weight files",
        )
    looks_like_hub_id = text.count("/") <= 1 and not text.startswith((".", "/", "~"))
    if looks_like_hub_id and text:
        repo_id, _, revision = text.partition("@")
        try:
            from huggingface_hub import snapshot_download

            return Path(
                snapshot_download(repo_id, revision=revision or None, local_files_only=True)
            )
        except Exception:  # any miss: not cached, bad id, offline
            pass
    if looks_like_hub_id and text:
        hint = (
            "pass a local HF model folder, or a hub id already in the local HF cache "
            f"(`hf download {text}` on a machine with internet)"
        )
    else:
        hint = "check the path: it should be a model folder with config.json and weight files"
    raise ModelNotFoundError(f"model not found: {text}", hint)


def is_model_folder(folder: Path) -> bool:
    """A folder with config.json and weight files: a checkpoint svdlora reads."""
    if not (folder / "config.json").is_file():
        return False
    patterns = (*WEIGHT_PATTERNS, *INDEX_PATTERNS)
    return any(next(folder.glob(p), None) is not None for p in patterns)


def enclosing_model_folder(path: str | os.PathLike[str]) -> Path | None:
    """The model folder `path` is, or lies inside (nearest first), if any."""
    folder = Path(path).expanduser().resolve()
    for candidate in (folder, *folder.parents):
        if candidate.is_dir() and is_model_folder(candidate):
            return candidate
    return None
