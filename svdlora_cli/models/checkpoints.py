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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ..errors import CheckpointError, ModelMismatchError
from .formats import ShardReader, TensorFormat, TensorSource, format_for
from .formats import TensorInfo as TensorInfo  # re-exported
from .quantized import Quantization, read_quantization
from .refs import resolve_model_path
from .weight_files import SAFETENSORS_INDEX as SAFETENSORS_INDEX  # re-exported
from .weight_files import select_weight_files

_HASH_CHUNK = 8 << 20
# Weight files hashed at once by the fingerprint thread's pool: half the cores, up to 8
# (one on this project's 2-core machines, where the other core decomposes meanwhile).
HASH_THREADS = max(1, min(8, (os.cpu_count() or 2) // 2))


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


def _digests(checkpoint: Checkpoint, memo: DigestMemo | None) -> list[tuple[Path, str, str | None]]:
    """Per weight file: (file, memo key, its sha256 when the memo knows it, else None)."""
    out = []
    for file in checkpoint.files:
        key = _memo_key(file)
        out.append((file, key, memo.get(key) if memo is not None else None))
    return out


def _combine(hashes: Iterable[tuple[Path, str]]) -> str:
    digest = hashlib.sha256()
    for file, file_hash in hashes:
        digest.update(f"{file.name}:{file_hash}\n".encode())
    return digest.hexdigest()


def fingerprint(checkpoint: Checkpoint, memo: DigestMemo | None = None) -> str:
    """Content digest of a checkpoint's weight files, memoised on (path, size, mtime, inode)."""
    return PendingFingerprints([checkpoint], memo, background=False).result()[0]


class PendingFingerprints:
    """The fingerprints of some checkpoints, with the files the memo does not know hashed by
    a background thread (file reads and sha256 release the GIL), so that a first look at a
    model overlaps the work that does not need its digest (e.g. importing transformers for
    the module map). The memo is read and written on the calling thread only."""

    def __init__(
        self, checkpoints: Sequence[Checkpoint], memo: DigestMemo | None, background: bool = True
    ) -> None:
        self._plans = [_digests(c, memo) for c in checkpoints]
        self._memo = memo
        self._done: list[str] | None = None
        unknown = sorted({f for plan in self._plans for f, _, h in plan if h is None})
        self._hashed: dict[Path, str] = {}
        self._error: BaseException | None = None
        self._thread = None
        if background and unknown:
            import threading

            # a daemon: a command that fails meanwhile does not wait for the hashing
            self._thread = threading.Thread(target=self._hash, args=(unknown,), daemon=True)
            self._thread.start()
        else:
            self._hash(unknown)

    def _hash(self, files: Sequence[Path]) -> None:
        try:
            workers = min(len(files), HASH_THREADS)
            if workers > 1:  # shards side by side: sha256 and file reads release the GIL
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(workers) as pool:
                    self._hashed = dict(zip(files, pool.map(_file_digest, files), strict=True))
            else:
                self._hashed = {f: _file_digest(f) for f in files}
        except OSError as exc:  # raised where the result is read, as the user's error
            self._error = CheckpointError(
                f"cannot read {exc.filename or 'a weight file'} to fingerprint it: "
                f"{exc.strerror or exc}",
                "the model folder changed while svdlora read it: let whatever writes it "
                "finish, then rerun",
            )
        except BaseException as exc:  # re-raised where the result is read
            self._error = exc

    def ready(self) -> bool:
        """True when `result` would not wait (the memo knew every file, or hashing ended)."""
        return self._done is not None or self._thread is None or not self._thread.is_alive()

    def result(self) -> list[str]:
        """Each checkpoint's fingerprint, waiting for the thread if it still hashes."""
        if self._done is None:
            if self._thread is not None:
                self._thread.join()
            if self._error is not None:
                raise self._error
            hashed = self._hashed
            self._done = []
            for plan in self._plans:
                hashes = []
                for file, key, known in plan:
                    if known is None:
                        known = hashed[file]
                        if self._memo is not None:
                            self._memo[key] = known
                    hashes.append((file, known))
                self._done.append(_combine(hashes))
        return self._done


@dataclass
class ModelPair:
    """A base and a tuned checkpoint of the same architecture, with content fingerprints
    (computed in the background from `open_pair`; reading one waits for them)."""

    base: Checkpoint
    tuned: Checkpoint
    names: list[str]
    only_base: list[str]
    only_tuned: list[str]
    pending: PendingFingerprints | None = None

    @property
    def base_fingerprint(self) -> str | None:
        return self.pending.result()[0] if self.pending is not None else None

    @property
    def tuned_fingerprint(self) -> str | None:
        return self.pending.result()[1] if self.pending is not None else None

    def fingerprints(self) -> dict[str, str | None]:
        return {"base": self.base_fingerprint, "tuned": self.tuned_fingerprint}

    def fingerprints_ready(self) -> bool:
        """True when reading the fingerprints would not wait for the hashing thread."""
        return self.pending is None or self.pending.ready()

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
        pending=PendingFingerprints([base, tuned], memo) if with_fingerprints else None,
        names=both,
        only_base=sorted(set(base.tensors) - set(tuned.tensors)),
        only_tuned=sorted(set(tuned.tensors) - set(base.tensors)),
    )
