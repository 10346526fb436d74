"""Atomic file writes and the run record: a reader never sees half a file."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success fsync it and rename it over `path`."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise OutputError(
            f"cannot write to {target.parent}: {exc.strerror or exc}",
            "choose a writable folder with --output-dir (or fix its permissions)",
        ) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    with contextlib.suppress(OSError):
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write UTF-8 text."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on success it replaces `path` in one rename.

    A previous folder at `path` is moved aside first and removed only after the
    new one is in place, so a crash never leaves neither.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def json_safe(value: Any) -> Any:
    """Replace NaN/Inf with None so every document parses as strict JSON (and in jq)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def dumps_json(data: Any, indent: int | None = 2) -> str:
    """Strict JSON text of a result document."""
    return json.dumps(json_safe(data), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Atomically write strict JSON with a trailing newline."""
    return write_text(path, dumps_json(data) + "\n")


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` if needed and check that files can be created in it."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".svdlora-probe-"):
            pass
    except OSError as exc:
        raise OutputError(
            f"output folder {folder} is not writable: {exc.strerror or exc}",
            "pass a writable folder with --output-dir",
        ) from exc
    return folder


def check_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Fail early if `path` could not be created or written, without creating anything."""
    folder = Path(path).expanduser()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(
            f"output folder {folder} is not writable ({probe} does not allow it)",
            "pass a writable folder with --output-dir",
        )
    return folder


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour shapes the results."""
    versions = {"python": sys.version.split()[0]}
    for name in ("svdlora", "torch", "transformers", "peft", "safetensors", "numpy", "scipy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_run_config(
    folder: str | os.PathLike[str], command: str, options: dict[str, Any], inputs: dict[str, Any]
) -> Path:
    """Record the exact invocation, package versions and input fingerprints beside outputs."""
    record = {
        "command": command,
        "argv": sys.argv,
        "options": options,
        "inputs": inputs,
        "versions": package_versions(),
    }
    return write_json(Path(folder) / "run_config.json", record)
