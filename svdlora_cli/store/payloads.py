"""Payload files of the artifact cache: safetensors U, S, Vh that carry their own index entry.

A payload's metadata holds its index entry and the sha256 of its tensor bytes, so a lost
index can be rebuilt from the payloads. Checks read the safetensors header as plain JSON
(no torch); torch is imported only to encode or decode the tensors themselves, and the
warm `svd` path decodes them as numpy arrays instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .decomposition import Decomposition

PAYLOAD_RECORD = "svdlora_entry"  # safetensors metadata key: the entry, for re-indexing
FACTORS = ("U", "S", "Vh")
# Bytes per element of every safetensors dtype (the format's spec).
_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "U16": 2,
    "I16": 2,
    "F16": 2,
    "BF16": 2,
    "U32": 4,
    "I32": 4,
    "F32": 4,
    "U64": 8,
    "I64": 8,
    "F64": 8,
}


def payload_path(directory: Path, key: str) -> Path:
    """Where the payload of `key` lives in a cache folder."""
    return directory / "payloads" / key[:2] / f"{key}.safetensors"


def payload_files(directory: Path) -> Iterator[Path]:
    """Every payload file in a cache folder (none when it has no payloads folder)."""
    return (directory / "payloads").rglob("*.safetensors")


def file_fields(data: bytes) -> dict[str, Any]:
    """What the index records of a payload file: its sha256 and its size."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _split(data: bytes) -> tuple[dict[str, Any], memoryview]:
    """A safetensors file's header (a JSON object) and a view of its tensor bytes (no copy:
    a payload is read on every cache hit)."""
    if len(data) < 8:
        raise ValueError("truncated header")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise ValueError("truncated header")
    header = json.loads(data[8 : 8 + length])
    if not isinstance(header, dict):
        raise ValueError("malformed header")
    return header, memoryview(data)[8 + length :]


def _factor_shapes(header: dict[str, Any], body_bytes: int) -> dict[str, list[int]]:
    """The tensor shapes a header declares, after checking that each fits the file."""
    shapes: dict[str, list[int]] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = spec["data_offsets"]
            size = _DTYPE_BYTES[spec["dtype"]] * math.prod(spec["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed header entry for {name}") from exc
        if not 0 <= begin <= end <= body_bytes or end - begin != size:
            raise ValueError(f"tensor {name} does not fit the file")
        shapes[name] = list(spec["shape"])
    missing = set(FACTORS) - set(shapes)
    if missing:
        raise ValueError(f"payload lacks {sorted(missing)}")
    return shapes


def check_payload(path: Path, entry: dict[str, Any]) -> bytes:
    """The payload's bytes after they match the index's sha256 and hold U, S and Vh.

    Raises OSError, ValueError or KeyError; needs no torch (cache verify uses it).
    """
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ValueError("checksum mismatch")
    header, body = _split(data)
    _factor_shapes(header, len(body))
    return data


def read_payload(path: Path, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The payload's tensors after `check_payload` passes."""
    from safetensors.torch import load

    return load(check_payload(path, entry))


def read_payload_arrays(path: Path, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    """The payload's tensors as numpy arrays after `check_payload` passes (no torch)."""
    from safetensors.numpy import load

    return load(check_payload(path, entry))


def encode_payload(key: str, dec: Decomposition, entry: dict[str, Any]) -> bytes:
    """A decomposition's payload file: U, S, Vh plus its index entry and tensor checksum."""
    from safetensors.torch import save

    tensors = {"U": dec.U.contiguous(), "S": dec.S.contiguous(), "Vh": dec.Vh.contiguous()}
    record = {
        **entry,
        "key": key,
        "tensors_sha256": hashlib.sha256(_split(save(tensors))[1]).hexdigest(),
    }
    return save(tensors, metadata={PAYLOAD_RECORD: json.dumps(record)})


def entry_from_payload(key: str, data: bytes) -> dict[str, Any]:
    """The index entry a payload file carries, after its tensors match its own checksum."""
    header, body = _split(data)
    meta = header.get("__metadata__") or {}
    if PAYLOAD_RECORD not in meta:
        raise ValueError("it carries no index entry (written by an older svdlora)")
    record = json.loads(meta[PAYLOAD_RECORD])
    if record.pop("key", None) != key:
        raise ValueError("its entry names another key")
    if hashlib.sha256(body).hexdigest() != record.pop("tensors_sha256", None):
        raise ValueError("checksum mismatch")
    shapes = _factor_shapes(header, len(body))
    if shapes["S"][:1] != [int(record["k"])]:
        raise ValueError("its entry does not match its tensors")
    float(record["fro_sq"])
    return {**record, "kind": "svd", **file_fields(data)}
