"""Index a checkpoint's shards and stream its tensors one at a time.

A checkpoint is opened from its headers only: tensor names, shapes and dtypes
come from each weight file's header (through its format reader, `formats.py`),
never from loading the weights. Tensors are then read one at a time, keeping a
single shard open, so peak memory stays at a few tensors however large the model
is. FP8 weights read dequantized (`quantized.py`). Model refs are resolved to
folders in `refs.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ..errors import CheckpointError, ModelMismatchError
from .formats import SAFETENSORS_DTYPES as SAFETENSORS_DTYPES  # re-exported
from .formats import ShardReader, TensorFormat, TensorSource, format_for
from .formats import TensorInfo as TensorInfo  # re-exported
from .quantized import Quantization, read_quantization
from .refs import resolve_model_path
from .weight_files import SAFETENSORS_INDEX as SAFETENSORS_INDEX  # re-exported
from .weight_files import select_weight_files

_HASH_CHUNK = 8 << 20


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
    formats: dict[Path, TensorFormat] = field(default_factory=dict)  # each file's reader

    def format_of(self, file: Path) -> TensorFormat:
        """The reader chosen for one of the weight files when the checkpoint was opened."""
        return self.formats.get(file) or format_for(file)

    @property
    def format(self) -> str:
        return self.format_of(self.files[0]).name

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))

    def names(self) -> list[str]:
        """Tensor names in file order, so a stream reads each shard once."""
        order = {f: i for i, f in enumerate(self.files)}
        return sorted(self.tensors, key=lambda n: (order[self.tensors[n].file], n))


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
    formats = {file: format_for(file) for file in files}  # chosen once per file
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        tensors.update(formats[file].header(file))
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
        str(ref),
        folder,
        tuple(files),
        tensors,
        config,
        quantization,
        selected.warning(folder),
        formats,
    )


class TensorReader:
    """Reads tensors of one checkpoint, keeping only the current shard open."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self._shards = ShardReader({f: checkpoint.format_of(f) for f in checkpoint.files})
        quant = checkpoint.quantization
        self._source: TensorSource = quant.reader(self._shards) if quant else self._shards

    def get(self, name: str) -> torch.Tensor:
        """One tensor in its stored dtype; FP8 weights come dequantized (never their codes)."""
        return self._source.read(self.checkpoint.tensors[name])

    def chunks(self, name: str, size: int) -> Iterator[torch.Tensor]:
        """A tensor as flat blocks of at most `size` elements, read piece by piece."""
        yield from self._source.chunks(self.checkpoint.tensors[name], size)

    def close(self) -> None:
        self._shards.close()

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
