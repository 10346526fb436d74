"""Content-addressed artifact store: a diskcache index with safetensors payloads.

Keys hash content only (model digests, tensor name, method parameters and a
format version), never paths. The index is a diskcache with JSON serialisation,
so nothing in the cache is ever unpickled; tensors live in safetensors files
whose sha256 is checked on every read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diskcache
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .decompose import Decomposition
from .files import atomic_path

FORMAT_VERSION = 2  # 2: sha256 file digests, oversample default k/2
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
        from .errors import InvalidOptionError

        raise InvalidOptionError(f"cannot read the size {text!r}", "use e.g. 2GB, 500MB or 64MiB")
    return int(float(match.group(1)) * units[match.group(2).upper()])


def content_key(kind: str, **parts: Any) -> str:
    """sha256 of a canonical JSON of the parts plus the kind and format version."""
    payload = json.dumps({"kind": kind, "v": FORMAT_VERSION, **parts}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class ArtifactCache:
    """Per-tensor decompositions and statistics; `directory=None` disables caching."""

    directory: Path | None
    size_limit: int | None = None
    hits: int = 0
    misses: int = 0
    _index: diskcache.Cache | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.directory is not None:
            from .errors import OutputError

            self.directory = Path(self.directory).expanduser()
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                # Eviction is ours (payload bytes, least recently used); the index itself is small.
                self._index = diskcache.Cache(
                    str(self.directory / "index"), disk=diskcache.JSONDisk, eviction_policy="none"
                )
            except OSError as exc:
                raise OutputError(
                    f"cannot use cache folder {self.directory}: {exc.strerror or exc}",
                    "pass a writable --cache-dir (or SVDLORA_CACHE_DIR), or --no-cache",
                ) from exc

    @property
    def enabled(self) -> bool:
        return self._index is not None

    @property
    def memo(self) -> diskcache.Cache | None:
        """The index doubles as the file-digest memo for fingerprints."""
        return self._index

    def _payload_path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / "payloads" / key[:2] / f"{key}.safetensors"

    def get_json(self, key: str) -> Any | None:
        """A small JSON record (statistics), or None."""
        if self._index is None:
            return None
        entry = self._index.get(key)
        return None if entry is None else entry.get("value")

    def put_json(self, key: str, value: Any, **meta: Any) -> None:
        if self._index is not None:
            self._index.set(key, {"kind": "json", "value": value, "created": time.time(), **meta})

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
        entry = self._index.get(key) if self._index is not None else None
        if entry is None or entry.get("kind") != "svd" or int(entry["k"]) < min_k:
            return None
        try:
            tensors = self._read_payload(key, entry)
        except (OSError, ValueError, KeyError) as exc:
            log.warning(
                "dropping corrupt cache entry for %s (%s); recomputing", entry["tensor"], exc
            )
            self._drop(key)
            return None
        if self.size_limit is not None:  # recency drives eviction
            self._index.set(key, {**entry, "accessed": time.time()})
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

    def _drop(self, key: str) -> None:
        if self._index is not None:
            self._index.delete(key)
        self._payload_path(key).unlink(missing_ok=True)

    def verify(self, fix: bool = False) -> dict[str, Any]:
        """Check every decomposition's payload against its checksum; `fix` drops the bad ones."""
        checked, bad = 0, []
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
                    self._drop(entry["key"])
        return {"checked": checked, "ok": checked - len(bad), "bad": bad, "fixed": fix}

    def _evict(self, keep: str | None = None) -> int:
        """Drop least recently used decompositions until payloads fit in size_limit."""
        if self.size_limit is None:
            return 0
        rows = [e for e in self.entries() if e["kind"] == "svd"]
        total = sum(int(e.get("bytes", 0)) for e in rows)
        dropped = 0
        for entry in sorted(rows, key=lambda e: float(e.get("accessed", e.get("created", 0)))):
            if total <= self.size_limit:
                break
            if entry["key"] == keep:
                continue
            self._drop(entry["key"])
            total -= int(entry.get("bytes", 0))
            dropped += 1
        return dropped

    def put_decomposition(self, key: str, dec: Decomposition, **meta: Any) -> None:
        """Write the payload atomically, then index it with its checksum."""
        if self._index is None:
            return
        data = save_safetensors(
            {"U": dec.U.contiguous(), "S": dec.S.contiguous(), "Vh": dec.Vh.contiguous()}
        )
        path = self._payload_path(key)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        self._index.set(
            key,
            {
                "kind": "svd",
                "k": dec.k,
                "method": dec.method,
                "complete": dec.complete,
                "fro_sq": dec.fro_sq,
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
                "created": time.time(),
                **meta,
            },
        )
        self._evict(keep=key)

    def entries(self) -> list[dict[str, Any]]:
        """Every artifact entry (file-digest memos excluded), newest first."""
        if self._index is None:
            return []
        rows = []
        for key in self._index.iterkeys():
            entry = self._index.get(key)
            if isinstance(entry, dict) and entry.get("kind") in ("svd", "json"):
                row = {k: v for k, v in entry.items() if k != "value"}
                rows.append({"key": key, **row})
        return sorted(rows, key=lambda r: -float(r.get("created", 0)))

    def info(self) -> dict[str, Any]:
        """Location, entry counts and bytes on disk."""
        if self._index is None or self.directory is None:
            return {"directory": None, "enabled": False}
        entries = self.entries()
        payload_bytes = (
            sum(f.stat().st_size for f in (self.directory / "payloads").rglob("*.safetensors"))
            if (self.directory / "payloads").exists()
            else 0
        )
        return {
            "directory": str(self.directory),
            "enabled": True,
            "decompositions": sum(e["kind"] == "svd" for e in entries),
            "statistics": sum(e["kind"] == "json" for e in entries),
            "fingerprint_memos": len(self._index) - len(entries),
            "payload_bytes": payload_bytes,
            "index_bytes": int(self._index.volume()),
            "size_limit": self.size_limit,
        }

    def clear(self) -> int:
        """Remove every entry and payload; returns how many artifact entries went."""
        if self._index is None or self.directory is None:
            return 0
        count = len(self.entries())
        self._index.clear()
        shutil.rmtree(self.directory / "payloads", ignore_errors=True)
        return count

    def close(self) -> None:
        """Enforce the size limit (recently used entries survive), then close the index."""
        if self._index is not None:
            self._evict()
            self._index.close()
