"""Index a checkpoint's shards and stream its tensors one at a time.

A checkpoint is opened from its headers only: tensor names, shapes and dtypes
come from the safetensors JSON header, never from loading the weights. Tensors
are then read one at a time, keeping a single shard open, so peak memory stays
at a few tensors however large the model is. Model refs are resolved to folders
in `model_refs`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ..errors import CheckpointError, ModelMismatchError
from .quantized import Quantization, read_quantization
from .refs import resolve_model_path
from .weight_files import SAFETENSORS_INDEX as SAFETENSORS_INDEX  # re-exported
from .weight_files import select_weight_files

_HASH_CHUNK = 8 << 20
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it looks like, read from the file header."""

    name: str
    file: Path
    shape: tuple[int, ...]
    dtype: str
    offset: int = -1  # absolute byte offset of the data in a safetensors file
    nbytes: int = 0


@dataclass
class Checkpoint:
    """A model's weight files and tensor index, without the weights themselves."""

    ref: str
    path: Path
    files: tuple[Path, ...]
    tensors: dict[str, TensorInfo]
    config: dict[str, Any] = field(default_factory=dict)
    quantization: Quantization | None = None  # FP8 weights and their scales (quantized.py)
    weights_warning: str | None = None  # names weight files in the folder left unread

    @property
    def format(self) -> str:
        return "safetensors" if self.files[0].suffix == ".safetensors" else "bin"

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))

    def names(self) -> list[str]:
        """Tensor names in file order, so a stream reads each shard once."""
        order = {f: i for i, f in enumerate(self.files)}
        return sorted(self.tensors, key=lambda n: (order[self.tensors[n].file], n))


def _read_safetensors_header(file: Path) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header; a truncated or corrupt file is an error."""
    size = file.stat().st_size
    hint = "re-download or re-save the checkpoint; the file is truncated or corrupt"
    try:
        with open(file, "rb") as handle:
            raw = handle.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{file} is too short to be a safetensors file", hint)
            (length,) = struct.unpack("<Q", raw)
            if length > min(size - 8, _MAX_HEADER):
                raise CheckpointError(f"{file} has a bad safetensors header length", hint)
            header = json.loads(handle.read(length))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read safetensors header of {file}: {exc}", hint) from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{file} has a malformed safetensors header", hint)
    data_size = size - 8 - length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = entry["data_offsets"]
            shape = tuple(int(d) for d in entry["shape"])
            dtype = str(entry["dtype"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{file}: malformed header entry for {name}", hint) from exc
        if end > data_size or start > end:
            raise CheckpointError(
                f"{file} is truncated: tensor {name} ends at byte {end} of {data_size}", hint
            )
        tensors[name] = TensorInfo(name, file, shape, dtype, 8 + length + start, end - start)
    return tensors


def _load_bin(file: Path) -> dict[str, torch.Tensor]:
    """Load a pytorch_model*.bin safely (weights_only), memory-mapped when the format allows."""
    try:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read {file} as a weights-only PyTorch checkpoint: {exc}".splitlines()[0],
            "convert the model to safetensors, or re-save it; svdlora never unpickles code",
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{file} does not hold a state dict", "re-save the model")
    return state


def open_checkpoint(ref: str | os.PathLike[str]) -> Checkpoint:
    """Index a checkpoint's tensors from its file headers."""
    folder = resolve_model_path(ref)
    selected = select_weight_files(folder)
    files = list(selected.files)
    if not files:
        adapter = (folder / "adapter_config.json").is_file()
        raise CheckpointError(
            f"no weights found in {folder}" + (" (it is a PEFT adapter folder)" if adapter else ""),
            "expected model.safetensors, sharded *.safetensors with an index, "
            "or pytorch_model*.bin",
        )
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        if file.suffix == ".safetensors":
            found = _read_safetensors_header(file)
        else:
            found = {
                n: TensorInfo(n, file, tuple(t.shape), str(t.dtype).removeprefix("torch."))
                for n, t in _load_bin(file).items()
            }
        tensors.update(found)
    config: dict[str, Any] = {}
    config_file = folder / "config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"{config_file} is not valid JSON", "re-save the model config"
            ) from exc
    quantization, tensors = read_quantization(folder, config, tensors)
    return Checkpoint(
        str(ref), folder, tuple(files), tensors, config, quantization, selected.warning(folder)
    )


class TensorReader:
    """Reads tensors of one checkpoint, keeping only the current shard open."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self._file: Path | None = None
        self._handle: Any = None

    def _open(self, file: Path) -> Any:
        if file != self._file:
            if self._handle is not None and not isinstance(self._handle, dict):
                self._handle.close()
            self._handle = None
            try:
                if file.suffix == ".safetensors":
                    self._handle = open(file, "rb")  # noqa: SIM115 (kept open across reads)
                else:
                    self._handle = _load_bin(file)
            except OSError as exc:
                raise CheckpointError(
                    f"cannot open {file}: {exc}", "check the file's permissions"
                ) from exc
            self._file = file
        return self._handle

    def get(self, name: str) -> torch.Tensor:
        """One tensor in its stored dtype; FP8 weights come dequantized (never their codes)."""
        quant = self.checkpoint.quantization
        raw = self._read(self.checkpoint.tensors[name])
        if quant is not None and name in quant.scales:
            return quant.dequantize(name, raw, self._read(quant.scales[name]))
        return raw

    def _read(self, info: TensorInfo) -> torch.Tensor:
        """One tensor, as stored (no dtype conversion).

        safetensors data is read with one positioned read into a fresh buffer rather
        than through a memory map, so only the tensors in use count towards RSS.
        """
        name = info.name
        handle = self._open(info.file)
        if isinstance(handle, dict):
            return handle[name]
        dtype = SAFETENSORS_DTYPES.get(info.dtype)
        if dtype is not None:
            buffer = bytearray(info.nbytes)
            handle.seek(info.offset)
            if handle.readinto(buffer) != info.nbytes:
                raise CheckpointError(
                    f"{info.file} ended inside tensor {name}",
                    "re-download or re-save the checkpoint",
                )
            if not buffer:
                return torch.empty(info.shape, dtype=dtype)
            return torch.frombuffer(buffer, dtype=dtype).reshape(info.shape)
        from safetensors import safe_open  # other dtypes (fp8, ...): the library's reader

        try:
            with safe_open(str(info.file), framework="pt", device="cpu") as fallback:
                return fallback.get_tensor(name)
        except Exception as exc:
            raise CheckpointError(
                f"cannot read tensor {name} from {info.file}: {exc}",
                "re-download or re-save the checkpoint; the file looks corrupt",
            ) from exc

    def chunks(self, name: str, size: int) -> Iterator[torch.Tensor]:
        """A tensor as flat blocks of at most `size` elements, read piece by piece."""
        info = self.checkpoint.tensors[name]
        dtype = SAFETENSORS_DTYPES.get(info.dtype)
        numel = math.prod(info.shape)
        quant = self.checkpoint.quantization
        quantized = quant is not None and name in quant.scales
        if dtype is None or quantized or info.offset < 0 or numel <= size:
            yield from self.get(name).reshape(-1).split(size)
            return
        handle = self._open(info.file)
        width = info.nbytes // numel
        for start in range(0, numel, size):
            count = min(size, numel - start)
            buffer = bytearray(count * width)
            handle.seek(info.offset + start * width)
            if handle.readinto(buffer) != len(buffer):
                raise CheckpointError(
                    f"{info.file} ended inside tensor {name}", "re-download the checkpoint"
                )
            yield torch.frombuffer(buffer, dtype=dtype)

    def close(self) -> None:
        if self._handle is not None and not isinstance(self._handle, dict):
            self._handle.close()
        self._file = None
        self._handle = None

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _file_digest(file: Path) -> str:
    digest = hashlib.sha256()  # hardware-accelerated on current CPUs: ~2x blake2b
    with open(file, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _memo_key(file: Path) -> str:
    stat = file.stat()
    return f"file-sha256:{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"


class DigestMemo(Protocol):
    """Where file digests are remembered (the artifact cache's index, or a dict)."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def __setitem__(self, key: str, value: Any) -> None: ...


def fingerprint(checkpoint: Checkpoint, memo: DigestMemo | None = None) -> str:
    """Content digest of a checkpoint's weight files, memoised on (path, size, mtime, inode)."""
    digest = hashlib.sha256()
    for file in checkpoint.files:
        key = _memo_key(file)
        file_hash = memo.get(key) if memo is not None else None
        if file_hash is None:
            file_hash = _file_digest(file)
            if memo is not None:
                memo[key] = file_hash
        digest.update(f"{file.name}:{file_hash}\n".encode())
    return digest.hexdigest()


@dataclass
class ModelPair:
    """A base and a tuned checkpoint of the same architecture, with content fingerprints."""

    base: Checkpoint
    tuned: Checkpoint
    base_fingerprint: str | None
    tuned_fingerprint: str | None
    names: list[str]
    only_base: list[str]
    only_tuned: list[str]

    def fingerprints(self) -> dict[str, str | None]:
        return {"base": self.base_fingerprint, "tuned": self.tuned_fingerprint}

    def iter_chunks(
        self, names: Iterable[str], size: int
    ) -> Iterator[tuple[str, Iterator[tuple[torch.Tensor, torch.Tensor]]]]:
        """Per tensor, its (base, tuned) blocks of `size` elements; consume each in turn."""
        with TensorReader(self.base) as base_reader, TensorReader(self.tuned) as tuned_reader:
            for name in names:
                blocks = zip(
                    base_reader.chunks(name, size), tuned_reader.chunks(name, size), strict=True
                )
                yield name, blocks


def open_pair(
    base_ref: str | os.PathLike[str],
    tuned_ref: str | os.PathLike[str],
    memo: DigestMemo | None = None,
    with_fingerprints: bool = True,
) -> ModelPair:
    """Open both checkpoints and check they describe the same tensors and shapes."""
    base = open_checkpoint(base_ref)
    tuned = open_checkpoint(tuned_ref)
    arch_base = base.config.get("architectures") or base.model_type
    arch_tuned = tuned.config.get("architectures") or tuned.model_type
    if arch_base and arch_tuned and arch_base != arch_tuned:
        raise ModelMismatchError(
            f"base is {arch_base} but tuned is {arch_tuned}",
            "pass a tuned model fine-tuned from this base (same architecture)",
        )
    both = [n for n in base.names() if n in tuned.tensors]
    mismatched = [
        f"{n} {list(base.tensors[n].shape)} vs {list(tuned.tensors[n].shape)}"
        for n in both
        if base.tensors[n].shape != tuned.tensors[n].shape
    ]
    if mismatched:
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise ModelMismatchError(
            f"tensor shapes differ between base and tuned: {mismatched[0]}{more}",
            "the tuned model must have the base's exact shapes (same config, no resized vocab)",
        )
    return ModelPair(
        base=base,
        tuned=tuned,
        base_fingerprint=fingerprint(base, memo) if with_fingerprints else None,
        tuned_fingerprint=fingerprint(tuned, memo) if with_fingerprints else None,
        names=both,
        only_base=sorted(set(base.tensors) - set(tuned.tensors)),
        only_tuned=sorted(set(tuned.tensors) - set(base.tensors)),
    )
