"""An output set (factors, adapter, reports, JSON) appears whole or not at all.

Every file of a step is written into a staging folder inside the output folder
(same filesystem), then moved into place by renames, the document last: its
presence means the rest is there. A failure removes the staging folder and
leaves the previous outputs as they were. While a step runs, its output folder
is locked, so a second run into the same folder is refused instead of mixing
files from two runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import OutputError

# Added to the busy folder's hint by the commands that train into a folder.
TRAINING_HINT = " (two trainings into one folder would overwrite each other's runs)"

STAGING_PREFIX = ".svdlora-staging-"


@contextlib.contextmanager
def locked_output(folder: Path, active: bool = True, why: str = "") -> Iterator[Path]:
    """Hold an exclusive lock on `folder` (created if needed) while a step computes and writes.

    A folder that this call created and that is still empty afterwards is removed again,
    so a failed run leaves nothing behind. `active=False` (ranks that write nothing) skips it.
    A busy folder is an OutputError naming the process that holds it (`lock_holder`);
    `why` adds to its hint.
    """
    if not active:
        yield folder
        return
    from .files import ensure_writable_dir

    created = not folder.exists()
    ensure_writable_dir(folder)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = lock_holder(folder)
            who = f"process {holder}" if holder is not None else "another svdlora process"
            raise OutputError(
                f"output folder {folder} is busy: {who} is training or writing into it",
                "wait for that run to finish, or pass another --output-dir" + why,
            ) from None
        _remove_stale_staging(folder)
        yield folder
    finally:
        os.close(fd)  # releases the lock
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds when empty


def _remove_stale_staging(folder: Path) -> None:
    """Staging folders left by a killed run (we hold the lock, so no live run owns one)."""
    for stale in folder.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def staged(folder: Path, last: Path) -> Iterator[Callable[[Path], Path]]:
    """Yield `at(final_path) -> staging_path`; on success move everything into `folder`
    (`last`, the document, moved last); on failure remove the staging folder."""
    stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))
    try:
        yield lambda final: stage / Path(final).relative_to(folder)
        entries = sorted(stage.iterdir(), key=lambda p: p.name == Path(last).name)
        for entry in entries:
            _move_into_place(entry, folder / entry.name, stage)
        _fsync_dir(folder)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _move_into_place(entry: Path, target: Path, stage: Path) -> None:
    """A file replaces its old version in one rename; a folder swaps with the old one."""
    if entry.is_dir() and target.is_dir() and not target.is_symlink():
        old = stage / f".old-{target.name}"
        os.replace(target, old)
        os.replace(entry, target)
        return  # the old folder goes with the staging folder
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    os.replace(entry, target)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_holder(folder: Path) -> int | None:
    """The id of the process holding a flock on `folder`, from /proc/locks (Linux); None
    where that cannot be read or the process is not visible from here."""
    try:
        stat = os.stat(folder)
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    for line in table.splitlines():
        fields = line.split()
        if "FLOCK" not in fields or "->" in fields:  # "->": a waiter, not the holder
            continue
        at = fields.index("FLOCK")
        try:
            pid, (major, minor, inode) = int(fields[at + 3]), fields[at + 4].split(":")
            device = os.makedev(int(major, 16), int(minor, 16))
        except (IndexError, ValueError):
            continue
        if int(inode) == stat.st_ino and device == stat.st_dev and pid > 0:
            return pid
    return None
