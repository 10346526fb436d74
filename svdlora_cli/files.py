"""Atomic file writes and the run record: a reader never sees half a file."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import OutputError, OutputWriteError

# OS errors that mean "this place cannot take the write", as opposed to a bug or bad input.
WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
)
_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# How an OS error shows inside another library's message: safetensors (Rust), or a re-raise.
_NAMED_OS_ERROR = re.compile(r"\(os error (\d+)\)|\[Errno (\d+)\]")


def errno_of(exc: BaseException) -> int | None:
    """The errno behind an exception: an OSError's, or one named in another library's message."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno:
            return current.errno
        match = _NAMED_OS_ERROR.search(str(current))
        if match:
            return int(match.group(1) or match.group(2))
        current = current.__cause__
    return None


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"  # pragma: no cover


def _mount_point(path: Path) -> Path:
    """The mount point that holds `path` (or would hold it, once created)."""
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    while not os.path.ismount(probe) and probe != probe.parent:
        probe = probe.parent
    return probe


def write_failure(
    path: str | os.PathLike[str], code: int | None, needed: int | None = None
) -> OutputWriteError:
    """The user error for an OS refusal to write `path`: what failed, where and what to do."""
    target = Path(path)
    reason = os.strerror(code).lower() if code else "the write failed"
    message = f"could not write {target}: {reason}"
    place = _mount_point(target)
    if code in _SPACE_ERRNOS:
        try:
            free = f"{human_bytes(shutil.disk_usage(place).free)} free"
        except OSError:
            free = "free space unknown"
        need = f", about {human_bytes(needed)} needed" if needed else ""
        what = "your disk quota" if code == errno.EDQUOT else "space"
        hint = f"free {what} on {place} ({free}{need}), or choose another --output-dir"
    elif code == errno.EROFS:
        hint = f"{place} is mounted read-only; choose another --output-dir"
    else:
        hint = f"check the permissions of {target.parent}, or choose another --output-dir"
    return OutputWriteError(message, hint, str(target), code, needed)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], size: int | None = None) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success fsync it and rename it over `path`.

    When the OS refuses the write (disk full, read-only, ...) the temp file is removed
    and an OutputWriteError names `path` (and `size`, the bytes it needed, when given).
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS:
            raise write_failure(target, exc.errno, size) from exc
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
    except Exception as exc:
        code = errno_of(exc)
        if code in WRITE_ERRNOS and not isinstance(exc, OutputError):
            raise write_failure(target, code, size) from exc
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


_SURROGATE = re.compile("[\ud800-\udfff]")


def is_utf8(text: str) -> bool:
    """False for a str that cannot be written as UTF-8: a path from non-UTF-8 bytes
    (os.fsdecode turns each such byte into a lone surrogate)."""
    return _SURROGATE.search(text) is None


def printable(text: str) -> str:
    """`text` with each byte of a non-UTF-8 path shown as `\\xNN` (as a shell's $'...'
    writes it), so it can be printed, put in a report or a message."""
    if is_utf8(text):
        return text

    def escape(match: re.Match[str]) -> str:
        code = ord(match.group())
        return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"

    return _SURROGATE.sub(escape, text)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write UTF-8 text (a non-UTF-8 path in it is written as `printable` shows it)."""
    data = printable(text).encode("utf-8")
    with atomic_path(path, size=len(data)) as tmp:
        tmp.write_bytes(data)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on success it replaces `path` in one rename.

    A previous folder at `path` is moved aside first and removed only after the
    new one is in place, so a crash never leaves neither.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS:
            raise write_failure(target, exc.errno) from exc
        raise
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
    except Exception as exc:
        code = errno_of(exc)
        if code in WRITE_ERRNOS and not isinstance(exc, OutputError):
            raise write_failure(target, code) from exc
        raise
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
        if exc.errno in _SPACE_ERRNOS or exc.errno == errno.EROFS:
            raise write_failure(folder, exc.errno) from exc
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
    """Record the exact invocation, package versions and input fingerprints beside outputs.

    `run_config.json` belongs to one command: a folder that holds another command's record
    (compare writing into the folder train wrote) gets `run_config_<command>.json` instead,
    so no command's record is overwritten by another's.
    """
    record = {
        "command": command,
        "argv": sys.argv,
        "options": options,
        "inputs": inputs,
        "versions": package_versions(),
    }
    path = Path(folder) / "run_config.json"
    try:
        owner = json.loads(path.read_text()).get("command") if path.is_file() else command
    except (OSError, ValueError, AttributeError):
        owner = None  # unreadable: never overwrite what we cannot read
    if owner != command:
        path = path.with_name(f"run_config_{command}.json")
    return write_json(path, record)
