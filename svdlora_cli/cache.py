"""Content-addressed artifact store: a diskcache index with safetensors payloads.

Keys hash content only (model digests, tensor name, method parameters and a
format version), never paths. The index is a diskcache with JSON serialisation,
so nothing in the cache is ever unpickled; tensors live in safetensors files
whose sha256 is checked on every read.

The cache never fails a command. Each payload also carries its own index entry
(safetensors metadata), so a broken index is moved aside and rebuilt from the
payloads. A cache folder that cannot be written (read-only mount, permissions,
full disk) is used read-only, with one warning, and results are still computed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diskcache
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .decompose import Decomposition
from .errors import OutputError, OutputWriteError
from .files import WRITE_ERRNOS, atomic_path, human_bytes

FORMAT_VERSION = 2  # 2: sha256 file digests, oversample default k/2
DEFAULT_CACHE_RANK = 64
DB_NAME = "cache.db"  # diskcache's SQLite file inside <cache>/index
PAYLOAD_RECORD = "svdlora_entry"  # safetensors metadata key: the entry, for re-indexing
log = logging.getLogger("svdlora")

# Errors a cache operation may meet on a damaged index or an unwritable disk.
_INDEX_ERRORS = (sqlite3.Error, OSError, diskcache.Timeout)
_STORE_ERRORS = (*_INDEX_ERRORS, OutputError)
_DAMAGE_ERRORS = (sqlite3.DatabaseError, ValueError, zlib.error, UnicodeDecodeError)
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def default_cache_dir() -> Path:
    """$SVDLORA_CACHE_DIR, else $XDG_CACHE_HOME/svdlora, else ~/.cache/svdlora."""
    env = os.environ.get("SVDLORA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "svdlora"


def parse_size(text: str | int | None) -> int | None:
    """`2GB`, `500MB`, `64KiB` or a byte count; None stays None."""
    if text is None or isinstance(text, int):
        return text
    units = {
        "": 1,
        "B": 1,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
        "TIB": 2**40,
    }
    match = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", str(text))
    if match is None or match.group(2).upper() not in units:
        from .errors import InvalidOptionError

        raise InvalidOptionError(f"cannot read the size {text!r}", "use e.g. 2GB, 500MB or 64MiB")
    return int(float(match.group(1)) * units[match.group(2).upper()])


def content_key(kind: str, **parts: Any) -> str:
    """sha256 of a canonical JSON of the parts plus the kind and format version."""
    payload = json.dumps({"kind": kind, "v": FORMAT_VERSION, **parts}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _is_corrupt(exc: BaseException) -> bool:
    """True when SQLite says the file is damaged or not a database (not locked, full, ...)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and not isinstance(exc, sqlite3.OperationalError):
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc)
    return "malformed" in text or "not a database" in text


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


def _quick_check(con: Callable[[str], Any]) -> Exception | None:
    """SQLite's own consistency check of the index; the problem found, or None."""
    try:
        rows = con("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        return exc if _is_corrupt(exc) else None
    if rows == [("ok",)]:
        return None
    return sqlite3.DatabaseError("; ".join(str(r[0]) for r in rows[:3])[:200])


def _data_section(data: bytes) -> bytes:
    """The tensor bytes of a safetensors file (everything after its header)."""
    (length,) = struct.unpack("<Q", data[:8])
    return data[8 + length :]


def _header_metadata(data: bytes) -> dict[str, str]:
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise ValueError("truncated header")
    return json.loads(data[8 : 8 + length]).get("__metadata__") or {}


def _entry_from_payload(key: str, data: bytes) -> dict[str, Any]:
    """The index entry a payload file carries, after its tensors match its own checksum."""
    meta = _header_metadata(data)
    if PAYLOAD_RECORD not in meta:
        raise ValueError("it carries no index entry (written by an older svdlora)")
    record = json.loads(meta[PAYLOAD_RECORD])
    if record.pop("key", None) != key:
        raise ValueError("its entry names another key")
    if hashlib.sha256(_data_section(data)).hexdigest() != record.pop("tensors_sha256", None):
        raise ValueError("checksum mismatch")
    tensors = load_safetensors(data)
    missing = {"U", "S", "Vh"} - set(tensors)
    if missing:
        raise ValueError(f"payload lacks {sorted(missing)}")
    if int(record["k"]) != tensors["S"].shape[0]:
        raise ValueError("its entry does not match its tensors")
    float(record["fro_sq"])
    return {
        **record,
        "kind": "svd",
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }


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


class _ReadOnlyIndex:
    """A diskcache index read without writing anything (for a cache that cannot be written)."""

    def __init__(self, folder: Path) -> None:
        db = folder / DB_NAME
        if not db.is_file():
            raise FileNotFoundError(2, "no index", str(db))
        self._disk = diskcache.JSONDisk(str(folder))
        uri = db.resolve().as_uri()
        # Plain read-only first. On a full disk SQLite cannot size the -shm file that WAL
        # reads need, and unix-excl keeps that index in memory instead (it only runs
        # SELECTs; it holds the file exclusively until closed). On a read-only mount
        # without a -shm file only an immutable open reads it.
        error: sqlite3.Error | None = None
        for query in ("?mode=ro", "?vfs=unix-excl", "?mode=ro&immutable=1"):
            con = None
            try:
                con = sqlite3.connect(uri + query, uri=True)
                con.execute("SELECT COUNT(*) FROM Cache").fetchone()
            except sqlite3.Error as exc:
                error = exc
                if con is not None:
                    con.close()
                continue
            self._con = con
            return
        assert error is not None
        raise error

    def _sql(self, query: str, *args: Any) -> sqlite3.Cursor:
        return self._con.execute(query, *args)

    def get(self, key: Any, default: Any = None) -> Any:
        db_key, raw = self._disk.put(key)
        row = self._con.execute(
            "SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = ?"
            " AND (expire_time IS NULL OR expire_time > ?)",
            (db_key, raw, time.time()),
        ).fetchone()
        return default if row is None else self._disk.fetch(*row, False)

    def iterkeys(self) -> Iterator[Any]:
        for db_key, raw in self._con.execute("SELECT key, raw FROM Cache ORDER BY rowid"):
            yield self._disk.get(db_key, raw)

    def __len__(self) -> int:
        return int(self._con.execute("SELECT COUNT(*) FROM Cache").fetchone()[0])

    def volume(self) -> int:
        (pages,) = self._con.execute("PRAGMA page_count").fetchone()
        (size,) = self._con.execute("PRAGMA page_size").fetchone()
        return int(pages) * int(size)

    def close(self) -> None:
        self._con.close()


class _DigestMemo:
    """The index seen as the file-digest memo of `fingerprint` (get and set never fail)."""

    def __init__(self, cache: ArtifactCache) -> None:
        self._cache = cache

    def get(self, key: str, default: Any = None) -> Any:
        return self._cache._read(lambda index: index.get(key, default), default)

    def __setitem__(self, key: str, value: Any) -> None:
        self._cache._store(lambda: self._cache._index.set(key, value))


@dataclass
class ArtifactCache:
    """Per-tensor decompositions and statistics; `directory=None` disables caching."""

    directory: Path | None
    size_limit: int | None = None
    hits: int = 0
    misses: int = 0
    read_only: bool = field(default=False, init=False)
    _index: Any = field(default=None, init=False, repr=False)
    _why_read_only: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        if self.directory is not None:
            self.directory = Path(self.directory).expanduser()
            self._index = self._open()

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
            index = self._open_writable()
        except _INDEX_ERRORS as exc:
            if _is_corrupt(exc):
                return self._recover(exc)
            return self._open_read_only(_reason(exc, self.directory))
        problem = _quick_check(index._sql)
        if problem is not None:
            with contextlib.suppress(*_INDEX_ERRORS):
                index.close()
            return self._recover(problem)
        self._index = index
        self._reindex_if_lost()
        return self._index

    def _open_writable(self) -> diskcache.Cache:
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
            index = _ReadOnlyIndex(self.directory / "index")
            problem = _quick_check(index._sql)
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
        self.read_only, self._why_read_only = True, why
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
                        index = self._open_writable()
                        if _quick_check(index._sql) is None:
                            return index
                        index.close()
                for suffix in ("", "-wal", "-shm"):
                    source = folder / f"{DB_NAME}{suffix}"
                    if source.exists():
                        os.replace(source, folder / f"{DB_NAME}{suffix}.corrupt-{stamp}")
                index = self._open_writable()
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
        self._index = index
        self._reindex()
        return self._index

    def _reindex_if_lost(self) -> None:
        """An empty index beside payload files (a truncated cache.db): index them again."""
        payloads = self.directory / "payloads" if self.directory is not None else None
        if payloads is None or not payloads.is_dir():
            return
        if self._read(len, 1) == 0 and next(payloads.rglob("*.safetensors"), None) is not None:
            log.warning(
                "the cache index in %s is empty but payload files remain; re-indexing them",
                self.directory,
            )
            self._reindex()

    def _reindex(self) -> None:
        """Index every payload that carries a valid entry; drop the others (with a warning)."""
        assert self.directory is not None
        dropped: list[str] = []
        for path in sorted((self.directory / "payloads").rglob("*.safetensors")):
            try:
                entry = _entry_from_payload(path.stem, path.read_bytes())
            except (OSError, ValueError, KeyError, TypeError) as exc:
                dropped.append(f"{path.name}: {exc}")
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            if not self._store(lambda key=path.stem, entry=entry: self._index.set(key, entry)):
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
    def enabled(self) -> bool:
        return self._index is not None

    @property
    def writable(self) -> bool:
        """False when disabled, read-only, or after a write failed (e.g. a full disk)."""
        return self._index is not None and not self.read_only

    @property
    def memo(self) -> _DigestMemo | None:
        """The index doubles as the file-digest memo for fingerprints."""
        return _DigestMemo(self) if self._index is not None else None

    def _read(self, action: Callable[[Any], Any], default: Any = None) -> Any:
        """`action(index)`; a damaged index is repaired once, an unreadable one switched off."""
        for attempt in range(2):
            if self._index is None:
                return default
            try:
                return action(self._index)
            except (*_INDEX_ERRORS, *_DAMAGE_ERRORS) as exc:
                damaged = _is_corrupt(exc) or (
                    isinstance(exc, _DAMAGE_ERRORS) and not isinstance(exc, sqlite3.Error)
                )
                with contextlib.suppress(*_INDEX_ERRORS):
                    self._index.close()
                if damaged and attempt == 0 and not self.read_only:
                    self._index = self._recover(exc, recheck=False)
                    continue
                log.warning(
                    "the cache index in %s cannot be read (%s); continuing without the cache",
                    self.directory,
                    exc,
                )
                self._index = None
        return default

    def _try_write(self, action: Callable[[], Any]) -> BaseException | None:
        try:
            action()
        except _STORE_ERRORS as exc:
            return exc
        return None

    def _store(self, action: Callable[[], Any]) -> bool:
        """Run a write; the first failure warns once and turns further writes off."""
        if not self.writable:
            return False
        exc = self._try_write(action)
        if exc is None:
            return True
        self.read_only, self._why_read_only = True, _reason(exc, self.directory)
        log.warning(
            "the cache could not store results in %s (%s); the results are complete "
            "but will be recomputed next time",
            self.directory,
            self._why_read_only,
        )
        return False

    # -- entries ------------------------------------------------------------------------------

    def _payload_path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / "payloads" / key[:2] / f"{key}.safetensors"

    def get_json(self, key: str) -> Any | None:
        """A small JSON record (statistics), or None."""
        entry = self._read(lambda index: index.get(key))
        return entry.get("value") if isinstance(entry, dict) else None

    def put_json(self, key: str, value: Any, **meta: Any) -> None:
        self._store(
            lambda: self._index.set(
                key, {"kind": "json", "value": value, "created": time.time(), **meta}
            )
        )

    def count(self, hit: bool) -> None:
        """Record one lookup's outcome (for lookups made with `peek_decomposition`)."""
        if hit:
            self.hits += 1
        else:
            self.misses += 1

    def get_decomposition(self, key: str, min_k: int) -> Decomposition | None:
        """A cached decomposition with at least `min_k` factors, counted as a hit or a miss."""
        dec = self.peek_decomposition(key, min_k)
        self.count(hit=dec is not None)
        return dec

    def peek_decomposition(self, key: str, min_k: int) -> Decomposition | None:
        """Like get_decomposition, without counting; corrupt payloads are dropped."""
        entry = self._read(lambda index: index.get(key))
        if not isinstance(entry, dict) or entry.get("kind") != "svd" or int(entry["k"]) < min_k:
            return None
        try:
            tensors = self._read_payload(key, entry)
        except (OSError, ValueError, KeyError) as exc:
            log.warning(
                "%s corrupt cache entry for %s (%s); recomputing",
                "dropping" if self.writable else "ignoring",
                entry.get("tensor"),
                exc,
            )
            self._drop(key)
            return None
        if self.size_limit is not None:  # recency drives eviction
            self._store(lambda: self._index.set(key, {**entry, "accessed": time.time()}))
        return Decomposition(
            U=tensors["U"],
            S=tensors["S"],
            Vh=tensors["Vh"],
            fro_sq=float(entry["fro_sq"]),
            method=str(entry["method"]),
            complete=bool(entry["complete"]),
        )

    def _read_payload(self, key: str, entry: dict[str, Any]) -> dict[str, Any]:
        """The payload's tensors after its sha256 matches the index (ValueError otherwise)."""
        data = self._payload_path(key).read_bytes()
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ValueError("checksum mismatch")
        tensors = load_safetensors(data)
        missing = {"U", "S", "Vh"} - set(tensors)
        if missing:
            raise ValueError(f"payload lacks {sorted(missing)}")
        return tensors

    def _drop(self, key: str) -> bool:
        """Remove an entry and its payload; False when the cache cannot be written."""
        if not self._store(lambda: self._index.delete(key)):
            return False
        with contextlib.suppress(OSError):
            self._payload_path(key).unlink(missing_ok=True)
        return True

    def verify(self, fix: bool = False) -> dict[str, Any]:
        """Check every decomposition's payload against its checksum; `fix` drops the bad ones."""
        checked, bad, fixed = 0, [], fix
        for entry in self.entries():
            if entry["kind"] != "svd":
                continue
            checked += 1
            try:
                self._read_payload(entry["key"], entry)
            except (OSError, ValueError, KeyError) as exc:
                bad.append(
                    {"key": entry["key"], "tensor": entry.get("tensor"), "problem": str(exc)}
                )
                if fix:
                    fixed = self._drop(entry["key"]) and fixed
        return {"checked": checked, "ok": checked - len(bad), "bad": bad, "fixed": fixed}

    def _evict(self, keep: str | None = None) -> int:
        """Drop least recently used decompositions until payloads fit in size_limit."""
        if self.size_limit is None or not self.writable:
            return 0
        rows = [e for e in self.entries() if e["kind"] == "svd"]
        total = sum(int(e.get("bytes", 0)) for e in rows)
        dropped = 0
        for entry in sorted(rows, key=lambda e: float(e.get("accessed", e.get("created", 0)))):
            if total <= self.size_limit:
                break
            if entry["key"] == keep:
                continue
            if not self._drop(entry["key"]):
                break
            total -= int(entry.get("bytes", 0))
            dropped += 1
        return dropped

    def put_decomposition(self, key: str, dec: Decomposition, **meta: Any) -> None:
        """Write the payload atomically, then index it with its checksum.

        The payload carries its own entry (safetensors metadata), so a lost index can be
        rebuilt. A write that fails (full disk, read-only) leaves no file behind and warns once.
        """
        if not self.writable:
            return
        tensors = {"U": dec.U.contiguous(), "S": dec.S.contiguous(), "Vh": dec.Vh.contiguous()}
        entry = {
            "kind": "svd",
            "k": dec.k,
            "method": dec.method,
            "complete": dec.complete,
            "fro_sq": dec.fro_sq,
            "created": time.time(),
            **meta,
        }
        record = {
            **entry,
            "key": key,
            "tensors_sha256": hashlib.sha256(_data_section(save_safetensors(tensors))).hexdigest(),
        }
        data = save_safetensors(tensors, metadata={PAYLOAD_RECORD: json.dumps(record)})
        path = self._payload_path(key)

        def store() -> None:
            with atomic_path(path, size=len(data)) as tmp:
                tmp.write_bytes(data)
            try:
                self._index.set(
                    key, {**entry, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                )
            except BaseException:
                with contextlib.suppress(OSError):
                    path.unlink()  # an unindexed payload only takes space
                raise

        if self._store(store):
            self._evict(keep=key)

    def entries(self) -> list[dict[str, Any]]:
        """Every artifact entry (file-digest memos excluded), newest first."""

        def collect(index: Any) -> list[dict[str, Any]]:
            rows = []
            for key in list(index.iterkeys()):
                entry = index.get(key)
                if isinstance(entry, dict) and entry.get("kind") in ("svd", "json"):
                    row = {k: v for k, v in entry.items() if k != "value"}
                    rows.append({"key": key, **row})
            return rows

        rows = self._read(collect, [])
        return sorted(rows, key=lambda r: -float(r.get("created", 0)))

    def info(self) -> dict[str, Any]:
        """Location, entry counts and bytes on disk."""
        if self._index is None or self.directory is None:
            directory = str(self.directory) if self.directory is not None else None
            return {"directory": directory, "enabled": False}
        entries = self.entries()
        payloads = self.directory / "payloads"
        payload_bytes = 0
        with contextlib.suppress(OSError):
            payload_bytes = sum(f.stat().st_size for f in payloads.rglob("*.safetensors"))
        doc = {
            "directory": str(self.directory),
            "enabled": self._index is not None,
            "decompositions": sum(e["kind"] == "svd" for e in entries),
            "statistics": sum(e["kind"] == "json" for e in entries),
            "fingerprint_memos": max(self._read(len, 0) - len(entries), 0),
            "payload_bytes": payload_bytes,
            "index_bytes": int(self._read(lambda index: index.volume(), 0)),
            "size_limit": self.size_limit,
        }
        if self.read_only:
            doc["read_only"] = self._why_read_only
        return doc

    def clear(self) -> int:
        """Remove every entry and payload; returns how many artifact entries went.

        On a full disk the index cannot be emptied in place, so its files are removed
        (which needs no space); set-aside broken indexes go too.
        """
        if self.directory is None:
            return 0
        count = len(self.entries())
        folder = self.directory / "index"
        cleared = self.writable and self._try_write(lambda: self._index.clear()) is None
        problems: list[OSError] = []
        if not cleared:
            if self._index is not None:
                with contextlib.suppress(*_INDEX_ERRORS):
                    self._index.close()
            self._index = None
            for file in folder.glob(f"{DB_NAME}*") if folder.is_dir() else []:
                try:
                    file.unlink()
                except OSError as exc:
                    problems.append(exc)
        for file in folder.glob(f"{DB_NAME}*.corrupt-*") if folder.is_dir() else []:
            with contextlib.suppress(OSError):
                file.unlink()
        try:
            shutil.rmtree(self.directory / "payloads")
        except FileNotFoundError:
            pass
        except OSError as exc:
            problems.append(exc)
        if (self.directory / "payloads").exists() or problems:
            exc = problems[0] if problems else None
            why = (exc.strerror or str(exc)).lower() if exc is not None else "files remain"
            raise OutputError(
                f"cannot clear the cache in {self.directory}: {why}",
                "check that the folder is writable (not a read-only mount), or delete it by hand",
            )
        if not cleared:  # start a fresh index in place of the removed one
            with contextlib.suppress(*_INDEX_ERRORS):
                self._index = self._open_writable()
        return count

    def close(self) -> None:
        """Enforce the size limit (recently used entries survive), then close the index."""
        if self._index is not None:
            self._evict()
            with contextlib.suppress(*_INDEX_ERRORS):
                self._index.close()
