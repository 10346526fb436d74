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

FORMAT_VERSION = 1
DEFAULT_CACHE_RANK = 64
log = logging.getLogger("svdlora")


def default_cache_dir() -> Path:
    """$SVDLORA_CACHE_DIR, else $XDG_CACHE_HOME/svdlora, else ~/.cache/svdlora."""
    env = os.environ.get("SVDLORA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "svdlora"


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
                settings: dict[str, Any] = {"disk": diskcache.JSONDisk}
                if self.size_limit is not None:
                    settings["size_limit"] = self.size_limit
                self._index = diskcache.Cache(str(self.directory / "index"), **settings)
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

    def get_decomposition(self, key: str, min_k: int) -> Decomposition | None:
        """A cached decomposition with at least `min_k` factors; corrupt payloads are dropped."""
        entry = self._index.get(key) if self._index is not None else None
        if entry is None or entry.get("kind") != "svd" or int(entry["k"]) < min_k:
            self.misses += 1
            return None
        path = self._payload_path(key)
        try:
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise ValueError("checksum mismatch")
            tensors = load_safetensors(data)
        except (OSError, ValueError, KeyError) as exc:
            log.warning(
                "dropping corrupt cache entry for %s (%s); recomputing", entry["tensor"], exc
            )
            self._index.delete(key)
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        self.hits += 1
        return Decomposition(
            U=tensors["U"],
            S=tensors["S"],
            Vh=tensors["Vh"],
            fro_sq=float(entry["fro_sq"]),
            method=str(entry["method"]),
            complete=bool(entry["complete"]),
        )

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
        if self._index is not None:
            self._index.close()
