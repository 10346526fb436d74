"""Content-addressed artifact store: a diskcache index with safetensors payloads.

Keys hash content only (model digests, tensor name, method parameters and a
format version), never paths. The index is a diskcache with JSON serialisation,
so nothing in the cache is ever unpickled; tensors live in safetensors files
whose sha256 is checked on every read.

The cache never fails a command: `cache_index` repairs a broken index from the
payloads (`cache_payloads`) and uses an unwritable folder read-only. Only reading
or writing a decomposition's tensors imports torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import OutputError
from ..files import atomic_path
from .index import GuardedIndex
from .payloads import (
    check_payload,
    encode_payload,
    entry_from_payload,
    file_fields,
    payload_files,
    payload_path,
    read_payload,
    read_payload_arrays,
)

if TYPE_CHECKING:
    from .decomposition import Decomposition

FORMAT_VERSION = 3  # 2: sha256 file digests, oversample default k/2; 3: float64 sums of squares
DEFAULT_CACHE_RANK = 64
log = logging.getLogger("svdlora")


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
        from ..errors import InvalidOptionError

        raise InvalidOptionError(f"cannot read the size {text!r}", "use e.g. 2GB, 500MB or 64MiB")
    return int(float(match.group(1)) * units[match.group(2).upper()])


def content_key(kind: str, **parts: Any) -> str:
    """sha256 of a canonical JSON of the parts plus the kind and format version."""
    payload = json.dumps({"kind": kind, "v": FORMAT_VERSION, **parts}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def tensor_key(
    kind: str, fingerprints: Mapping[str, str | None], tensor: str, **params: Any
) -> str:
    """The key of a per-tensor entry of a model pair (`svd`, `delta-stats`, `intruders`):
    the pair's `fingerprints` (`base`, `tuned`), the tensor's name and the kind's parameters."""
    return content_key(kind, **fingerprints, tensor=tensor, **params)


@dataclass
class ArtifactCache:
    """Per-tensor decompositions and statistics; `directory=None` disables caching."""

    directory: Path | None
    size_limit: int | None = None
    hits: int = 0
    misses: int = 0
    _guard: GuardedIndex = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.directory is not None:
            self.directory = Path(self.directory).expanduser()
        self._guard = GuardedIndex(self.directory)

    @property
    def enabled(self) -> bool:
        return self._guard.index is not None

    @property
    def read_only(self) -> bool:
        """True when the folder cannot be written, or after a write failed."""
        return self._guard.read_only

    @property
    def writable(self) -> bool:
        """False when disabled, read-only, or after a write failed (e.g. a full disk)."""
        return self._guard.writable

    @property
    def memo(self) -> GuardedIndex | None:
        """The index doubles as the file-digest memo for fingerprints."""
        return self._guard if self._guard.index is not None else None

    def _set(self, key: str, entry: dict[str, Any]) -> bool:
        return self._guard.store(lambda: self._guard.index.set(key, entry))

    # -- entries ------------------------------------------------------------------------------

    def _payload_path(self, key: str) -> Path:
        assert self.directory is not None
        return payload_path(self.directory, key)

    def get_json(self, key: str) -> Any | None:
        """A small JSON record (statistics), or None."""
        entry = self._guard.get(key)
        return entry.get("value") if isinstance(entry, dict) else None

    def put_json(self, key: str, value: Any, **meta: Any) -> None:
        self._set(key, {"kind": "json", "value": value, "created": time.time(), **meta})

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

    def svd_entry(self, key: str, min_k: int) -> dict[str, Any] | None:
        """The index entry of a decomposition with at least `min_k` factors, or None."""
        entry = self._guard.get(key)
        if not isinstance(entry, dict) or entry.get("kind") != "svd" or int(entry["k"]) < min_k:
            return None
        return entry

    def _touch(self, key: str, entry: dict[str, Any]) -> None:
        if self.size_limit is not None:  # recency drives eviction
            self._set(key, {**entry, "accessed": time.time()})

    def peek_arrays(self, key: str, min_k: int) -> dict[str, Any] | None:
        """A decomposition's U, S, Vh as numpy arrays (no torch), checked like
        `peek_decomposition`; a corrupt payload gives None and is left for it to drop."""
        entry = self.svd_entry(key, min_k)
        if entry is None:
            return None
        try:
            arrays = read_payload_arrays(self._payload_path(key), entry)
        except Exception:  # any failure (safetensors raises its own type): not served here
            return None
        self._touch(key, entry)
        return arrays

    def peek_decomposition(self, key: str, min_k: int) -> Decomposition | None:
        """Like get_decomposition, without counting; corrupt payloads are dropped."""
        entry = self.svd_entry(key, min_k)
        if entry is None:
            return None
        try:
            tensors = read_payload(self._payload_path(key), entry)
        except (OSError, ValueError, KeyError) as exc:
            log.warning(
                "%s corrupt cache entry for %s (%s); recomputing",
                "dropping" if self.writable else "ignoring",
                entry.get("tensor"),
                exc,
            )
            self._drop(key)
            return None
        self._touch(key, entry)
        from .decomposition import Decomposition

        return Decomposition(
            U=tensors["U"],
            S=tensors["S"],
            Vh=tensors["Vh"],
            fro_sq=float(entry["fro_sq"]),
            method=str(entry["method"]),
            complete=bool(entry["complete"]),
            iterations=int(entry.get("iterations", 0)),
            gap_bound=float(entry.get("gap_bound", 0.0)),
        )

    def _drop(self, key: str) -> bool:
        """Remove an entry and its payload; False when the cache cannot be written."""
        if not self._guard.store(lambda: self._guard.index.delete(key)):
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
                check_payload(self._payload_path(entry["key"]), entry)
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
        entry = {
            "kind": "svd",
            "k": dec.k,
            "method": dec.method,
            "complete": dec.complete,
            "iterations": dec.iterations,
            "gap_bound": dec.gap_bound,
            "fro_sq": dec.fro_sq,
            "created": time.time(),
            **meta,
        }
        data = encode_payload(key, dec, entry)
        path = self._payload_path(key)

        def store() -> None:
            stored = _publish_payload(key, path, data)
            try:
                self._guard.index.set(key, {**entry, **file_fields(stored)})
            except BaseException:
                with contextlib.suppress(OSError):
                    path.unlink()  # an unindexed payload only takes space
                raise

        if self._guard.store(store):
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

        rows = self._guard.read(collect, [])
        return sorted(rows, key=lambda r: -float(r.get("created", 0)))

    def info(self) -> dict[str, Any]:
        """Location, entry counts and bytes on disk."""
        if self._guard.index is None or self.directory is None:
            directory = str(self.directory) if self.directory is not None else None
            return {"directory": directory, "enabled": False}
        entries = self.entries()
        payload_bytes = 0
        with contextlib.suppress(OSError):
            payload_bytes = sum(f.stat().st_size for f in payload_files(self.directory))
        doc = {
            "directory": str(self.directory),
            "enabled": self._guard.index is not None,
            "decompositions": sum(e["kind"] == "svd" for e in entries),
            "statistics": sum(e["kind"] == "json" for e in entries),
            "fingerprint_memos": max(self._guard.read(len, 0) - len(entries), 0),
            "payload_bytes": payload_bytes,
            "index_bytes": int(self._guard.read(lambda index: index.volume(), 0)),
            "size_limit": self.size_limit,
        }
        if self.read_only:
            doc["read_only"] = self._guard.why_read_only
        return doc

    def clear(self) -> int:
        """Remove every entry and payload; returns how many artifact entries went.

        On a full disk the index cannot be emptied in place, so its files are removed
        (which needs no space); set-aside broken indexes go too.
        """
        if self.directory is None:
            return 0
        count = len(self.entries())
        problems = self._guard.clear()
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
        self._guard.reopen()
        return count

    def close(self) -> None:
        """Enforce the size limit (recently used entries survive), then close the index."""
        if self._guard.index is not None:
            self._evict()
            self._guard.close()


def _publish_payload(key: str, path: Path, data: bytes) -> bytes:
    """Put `data` at `path` unless a valid payload is already there; return the bytes at path.

    The first writer wins (a hard link cannot replace a file), so a payload never changes
    once written: two processes computing the same key concurrently index the same file,
    not each its own bytes (their entries differ in timings). A damaged file is replaced.
    """
    staging = path.with_name(f"{path.name}.{os.getpid()}.new")
    try:
        with atomic_path(staging, size=len(data)) as tmp:
            tmp.write_bytes(data)
        try:
            os.link(staging, path)
            return data
        except FileExistsError:
            existing = path.read_bytes()
            try:
                entry_from_payload(key, existing)
                return existing
            except ValueError:
                os.replace(staging, path)
                return data
    finally:
        with contextlib.suppress(OSError):
            staging.unlink()
