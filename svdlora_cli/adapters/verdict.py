"""The cache key of an adapter's verdict: a passed check is kept under the bytes it checked.

No torch here: the warm `svd` path recomputes the key from the adapter it wrote and the
factors (numpy arrays) it wrote them from; the full path passes torch tensors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .factors import as_array

# Bump when the checks change what they accept: cached verdicts of older checks no longer match.
# 2: the delta check compares PEFT's reading with the SVD's factors with or without the probe
# (version 1 compared with this package's reading of the file when the probe was off, which
# a wrong alpha read the same way by both passes).
VERDICT_VERSION = 2


def factors_digest(factors: Mapping[str, Any]) -> str:
    """sha256 over each module (sorted) of its name, then B's and A's shape and float32 bytes."""
    digest = hashlib.sha256()
    for module in sorted(factors):
        digest.update(module.encode())
        for matrix in (factors[module].B, factors[module].A):
            values = np.ascontiguousarray(as_array(matrix), dtype=np.float32)
            digest.update(str(tuple(values.shape)).encode())
            digest.update(values.tobytes())
    return digest.hexdigest()


def verdict_key(
    adapter: str | Path,
    base_fingerprint: str | None,
    base_ref: str,
    factors: Mapping[str, Any],
    probe: bool,
) -> str | None:
    """The cache key of an adapter's verdict: the sha256 of every file in the adapter folder,
    of the factors it must equal (each module's B and A), of the base's config.json, the
    base's weights fingerprint, the probe setting and the versions of the packages that read
    the adapter (`reader_versions`). None without a fingerprint."""
    from ..models.refs import resolve_model_path
    from ..store.cache import content_key

    if not base_fingerprint:
        return None
    folder = Path(adapter)
    files = {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.iterdir())
        if f.is_file()
    }
    config = resolve_model_path(base_ref) / "config.json"
    return content_key(
        "adapter-verdict",
        version=VERDICT_VERSION,
        adapter=files,
        factors=factors_digest(factors),
        base=base_fingerprint,
        base_config=hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None,
        probe=probe,
        readers=reader_versions(),
    )


def reader_versions() -> dict[str, str | None]:
    """The versions of the packages whose reading of the adapter the verdict vouches for: a
    passed check under one PEFT or transformers says nothing about the next one."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("peft", "transformers", "safetensors", "torch"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
