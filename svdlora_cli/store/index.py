"""The artifact cache's index (diskcache over SQLite), opened so that it never fails a command.

A broken index is moved aside and rebuilt from the payloads (each carries its own entry).
A cache folder that cannot be written (read-only mount, permissions, full disk) is read
without writing, with one warning; an index that cannot be read at all switches the cache off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import diskcache

from ..errors import OutputError, OutputWriteError
from ..files import WRITE_ERRNOS, human_bytes
from .payloads import entry_from_payload, payload_files
from .sqlite import DB_NAME, ReadOnlyIndex, is_corrupt, quick_check

log = logging.getLogger("svdlora")

# Errors a cache operation may meet on a damaged index or an unwritable disk.
_INDEX_ERRORS = (sqlite3.Error, OSError, diskcache.Timeout)
_STORE_ERRORS = (*_INDEX_ERRORS, OutputError)
_DAMAGE_ERRORS = (sqlite3.DatabaseError, ValueError, zlib.error, UnicodeDecodeError)


def _reason(exc: BaseException, directory: Path | None) -> str:
    """Why a write failed, in words, with the free space when space is the likely cause."""
    if isinstance(exc, OutputWriteError) and exc.errno:
        text = os.strerror(exc.errno).lower()
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror.lower()
    else:
        text = str(exc) or type(exc).__name__
    if directory is not None:
        try:
            free = shutil.disk_usage(directory).free
        except OSError:
            return text
        if free < 2**20 or "full" in text or "space" in text:
            text += f"; {human_bytes(free)} free"
    return text


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (so one process repairs the index at a time)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class GuardedIndex:
    """The index of a cache folder (`None`: no cache) behind reads and writes that never raise.

    It doubles as the file-digest memo of `fingerprint` (`get` and item assignment).
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.index: Any = None
        self.read_only = False
        self.why_read_only = ""
        if directory is not None:
            self.index = self._open()

    # -- opening, repair and read-only use ------------------------------------------------

    def _open(self) -> Any:
        """The index: repaired when broken, read-only when the folder cannot be written."""
        assert self.directory is not None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if exc.errno not in WRITE_ERRNOS:
                raise OutputError(
                    f"cannot use cache folder {self.directory}: {exc.strerror or exc}",
                    "pass a writable --cache-dir (or SVDLORA_CACHE_DIR), or --no-cache",
                ) from exc
            if not self.directory.is_dir():
                log.warning(
                    "cannot create the cache folder %s (%s); running without the cache",
                    self.directory,
                    _reason(exc, None),
                )
                return None
            return self._open_read_only(_reason(exc, self.directory))
        try:
            index = self.open_writable()
        except _INDEX_ERRORS as exc:
            if is_corrupt(exc):
                return self._recover(exc)
            return self._open_read_only(_reason(exc, self.directory))
        problem = quick_check(index._sql)
        if problem is not None:
            with contextlib.suppress(*_INDEX_ERRORS):
                index.close()
            return self._recover(problem)
        self.index = index
        self._reindex_if_lost()
        return self.index

    def open_writable(self) -> diskcache.Cache:
        assert self.directory is not None
        index = diskcache.Cache.__new__(diskcache.Cache)
        try:
            # Eviction is ours (payload bytes, least recently used); the index itself is small.
            index.__init__(  # type: ignore[misc]
                str(self.directory / "index"), disk=diskcache.JSONDisk, eviction_policy="none"
            )
        except BaseException:
            # Close the half-opened connection now: left to the garbage collector, its
            # close may act on index files that a repair has replaced meanwhile.
            with contextlib.suppress(Exception):
                index.close()
            raise
        return index

    def _open_read_only(self, why: str) -> Any:
        """Use the existing index without writing to it, or run without the cache."""
        assert self.directory is not None
        try:
            index = ReadOnlyIndex(self.directory / "index")
            problem = quick_check(index._sql)
        except _INDEX_ERRORS as exc:
            index, problem = None, exc
        if index is None or problem is not None:
            log.warning(
                "the cache folder %s cannot be written (%s) and holds no readable index (%s); "
                "running without the cache",
                self.directory,
                why,
                problem,
            )
            return None
        self.read_only, self.why_read_only = True, why
        log.warning(
            "the cache folder %s cannot be written (%s); using its entries read-only, "
            "new results are not stored",
            self.directory,
            why,
        )
        return index

    def _recover(self, problem: BaseException, recheck: bool = True) -> Any:
        """Move a broken index aside (cache.db.corrupt-<time>) and rebuild it from the payloads."""
        assert self.directory is not None
        folder = self.directory / "index"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        try:
            with _exclusive(self.directory / ".index.lock"):
                if recheck:  # another process may have repaired it while we waited
                    with contextlib.suppress(*_INDEX_ERRORS):
                        index = self.open_writable()
                        if quick_check(index._sql) is None:
                            return index
                        index.close()
                for suffix in ("", "-wal", "-shm"):
                    source = folder / f"{DB_NAME}{suffix}"
                    if source.exists():
                        os.replace(source, folder / f"{DB_NAME}{suffix}.corrupt-{stamp}")
                index = self.open_writable()
        except _INDEX_ERRORS as exc:
            log.warning(
                "the cache index %s is broken (%s) and cannot be rebuilt (%s); "
                "running without the cache",
                folder / DB_NAME,
                problem,
                _reason(exc, self.directory),
            )
            return None
        log.warning(
            "the cache index %s was broken (%s); moved it to %s and rebuilt it from the payloads",
            folder / DB_NAME,
            problem,
            f"{DB_NAME}.corrupt-{stamp}",
        )
        self.index = index
        self._reindex()
        return self.index

    def _reindex_if_lost(self) -> None:
        """An empty index beside payload files (a truncated cache.db): index them again."""
        if self.directory is None or not (self.directory / "payloads").is_dir():
            return
        if self.read(len, 1) == 0 and next(payload_files(self.directory), None) is not None:
            log.warning(
                "the cache index in %s is empty but payload files remain; re-indexing them",
                self.directory,
            )
            self._reindex()

    def _reindex(self) -> None:
        """Index every payload that carries a valid entry; drop the others (with a warning)."""
        assert self.directory is not None
        dropped: list[str] = []
        for path in sorted(payload_files(self.directory)):
            try:
                entry = entry_from_payload(path.stem, path.read_bytes())
            except (OSError, ValueError, KeyError, TypeError) as exc:
                dropped.append(f"{path.name}: {exc}")
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            if not self.store(lambda key=path.stem, entry=entry: self.index.set(key, entry)):
                return
        if dropped:
            log.warning(
                "dropped %d cache payload(s) that could not be re-indexed (%s%s); "
                "they are recomputed on demand",
                len(dropped),
                dropped[0],
                ", ..." if len(dropped) > 1 else "",
            )

    # -- guarded reads and writes -----------------------------------------------------------

    @property
    def writable(self) -> bool:
        """False when disabled, read-only, or after a write failed (e.g. a full disk)."""
        return self.index is not None and not self.read_only

    def read(self, action: Callable[[Any], Any], default: Any = None) -> Any:
        """`action(index)`; a damaged index is repaired once, an unreadable one switched off."""
        for attempt in range(2):
            if self.index is None:
                return default
            try:
                return action(self.index)
            except (*_INDEX_ERRORS, *_DAMAGE_ERRORS) as exc:
                damaged = is_corrupt(exc) or (
                    isinstance(exc, _DAMAGE_ERRORS) and not isinstance(exc, sqlite3.Error)
                )
                with contextlib.suppress(*_INDEX_ERRORS):
                    self.index.close()
                if damaged and attempt == 0 and not self.read_only:
                    self.index = self._recover(exc, recheck=False)
                    continue
                log.warning(
                    "the cache index in %s cannot be read (%s); continuing without the cache",
                    self.directory,
                    exc,
                )
                self.index = None
        return default

    def try_write(self, action: Callable[[], Any]) -> BaseException | None:
        """Run a write; the error it met (unwritable disk, broken index), or None."""
        try:
            action()
        except _STORE_ERRORS as exc:
            return exc
        return None

    def store(self, action: Callable[[], Any]) -> bool:
        """Run a write; the first failure warns once and turns further writes off."""
        if not self.writable:
            return False
        exc = self.try_write(action)
        if exc is None:
            return True
        self.read_only, self.why_read_only = True, _reason(exc, self.directory)
        log.warning(
            "the cache could not store results in %s (%s); the results are complete "
            "but will be recomputed next time",
            self.directory,
            self.why_read_only,
        )
        return False

    def get(self, key: str, default: Any = None) -> Any:
        return self.read(lambda index: index.get(key, default), default)

    def __setitem__(self, key: str, value: Any) -> None:
        self.store(lambda: self.index.set(key, value))

    def clear(self) -> list[OSError]:
        """Empty the index; on a full disk remove its files instead (which needs no space).

        Set-aside broken indexes go too. Returns the removals that failed; `reopen` follows.
        """
        assert self.directory is not None
        folder = self.directory / "index"
        cleared = self.writable and self.try_write(lambda: self.index.clear()) is None
        problems: list[OSError] = []
        if not cleared:
            self.close()
            self.index = None
            for file in folder.glob(f"{DB_NAME}*") if folder.is_dir() else []:
                try:
                    file.unlink()
                except OSError as exc:
                    problems.append(exc)
        for file in folder.glob(f"{DB_NAME}*.corrupt-*") if folder.is_dir() else []:
            with contextlib.suppress(OSError):
                file.unlink()
        return problems

    def reopen(self) -> None:
        """After `clear` removed the index files: start a fresh index in their place."""
        if self.index is None:
            with contextlib.suppress(*_INDEX_ERRORS):
                self.index = self.open_writable()

    def close(self) -> None:
        if self.index is not None:
            with contextlib.suppress(*_INDEX_ERRORS):
                self.index.close()
