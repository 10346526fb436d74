"""Weight-file formats: one reader class per format, chosen once per file by `format_for`.

A format knows how to index a file from its header (`header`), open it (`open`), and
read one tensor (`read`) or a tensor's flat blocks (`chunks`) through the open handle.
`format_for` is the only place in svdlora that looks at a weight file's suffix; the
glob patterns that find weight files in a folder come from the same classes.

- `SafetensorsFormat`: the JSON header is parsed and bounds-checked, and tensors are
  read with positioned reads into fresh buffers (no memory map), so only the tensors
  in use count towards RSS.
- `TorchBinFormat`: `pytorch_model*.bin` loaded with `torch.load(weights_only=True)`,
  memory-mapped when the file allows; nothing a user hands us is ever unpickled.

FP8 checkpoints wrap these readers (see `quantized.py`): codes and scales are read
here and dequantized there. GGUF is no reader format: the one built-in GGUF model is
converted once to a safetensors folder (`builtin.py`).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..errors import CheckpointError

if TYPE_CHECKING:
    import torch

# safetensors dtype -> torch dtype name; torch is imported only to read tensors, so finding
# and indexing weight files (model refs, headers) stays light.
_TORCH_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def torch_dtype(name: str) -> torch.dtype | None:
    """The torch dtype of a safetensors dtype name, None for those torch reads otherwise."""
    import torch

    return getattr(torch, _TORCH_DTYPES[name]) if name in _TORCH_DTYPES else None


_MAX_HEADER = 100 << 20
_TRUNCATED = "re-download or re-save the checkpoint; the file is truncated or corrupt"


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it looks like, read from the file header."""

    name: str
    file: Path
    shape: tuple[int, ...]
    dtype: str
    offset: int = -1  # absolute byte offset of the data in a safetensors file
    nbytes: int = 0


class TensorSource(Protocol):
    """Anything that reads indexed tensors: the shard reader, or a wrapper over it."""

    def read(self, info: TensorInfo) -> torch.Tensor: ...

    def chunks(self, info: TensorInfo, size: int) -> Iterator[torch.Tensor]: ...


class TensorFormat:
    """One weight-file format. Subclasses fill in the four operations."""

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]  # what format_for matches a file's suffix against
    patterns: ClassVar[tuple[str, ...]]  # globs that find this format's weights in a folder
    index_patterns: ClassVar[tuple[str, ...]] = ()  # globs of shard index files

    def header(self, file: Path) -> dict[str, TensorInfo]:
        """Every tensor's name, shape and dtype (and where it lies), without its data."""
        raise NotImplementedError

    def open(self, file: Path) -> Any:
        """A handle `read` and `chunks` take; OSError propagates to the caller."""
        raise NotImplementedError

    def close(self, handle: Any) -> None:
        """Release a handle from `open`."""

    def read(self, handle: Any, info: TensorInfo) -> torch.Tensor:
        """One tensor, as stored (no dtype conversion)."""
        raise NotImplementedError

    def chunks(self, handle: Any, info: TensorInfo, size: int) -> Iterator[torch.Tensor]:
        """A tensor as flat blocks of at most `size` elements."""
        yield from self.read(handle, info).reshape(-1).split(size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SafetensorsFormat(TensorFormat):
    """`*.safetensors`: header-indexed, read with positioned reads."""

    name = "safetensors"
    suffixes = (".safetensors",)
    patterns = ("*.safetensors",)
    index_patterns = ("*.safetensors.index.json",)

    def header(self, file: Path) -> dict[str, TensorInfo]:
        """Parse and validate a safetensors header; a truncated or corrupt file is an error."""
        size = file.stat().st_size
        try:
            with open(file, "rb") as handle:
                raw = handle.read(8)
                if len(raw) < 8:
                    raise CheckpointError(
                        f"{file} is too short to be a safetensors file", _TRUNCATED
                    )
                (length,) = struct.unpack("<Q", raw)
                if length > min(size - 8, _MAX_HEADER):
                    raise CheckpointError(f"{file} has a bad safetensors header length", _TRUNCATED)
                header = json.loads(handle.read(length))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(
                f"cannot read safetensors header of {file}: {exc}", _TRUNCATED
            ) from exc
        if not isinstance(header, dict):
            raise CheckpointError(f"{file} has a malformed safetensors header", _TRUNCATED)
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
                raise CheckpointError(
                    f"{file}: malformed header entry for {name}", _TRUNCATED
                ) from exc
            if end > data_size or start > end:
                raise CheckpointError(
                    f"{file} is truncated: tensor {name} ends at byte {end} of {data_size}",
                    _TRUNCATED,
                )
            tensors[name] = TensorInfo(name, file, shape, dtype, 8 + length + start, end - start)
        return tensors

    def open(self, file: Path) -> Any:
        return open(file, "rb")  # kept open across reads; close() releases it

    def close(self, handle: Any) -> None:
        handle.close()

    def read(self, handle: Any, info: TensorInfo) -> torch.Tensor:
        """One positioned read into a fresh buffer; other dtypes (fp8, ...) via safetensors."""
        import torch

        dtype = torch_dtype(info.dtype)
        if dtype is not None:
            buffer = bytearray(info.nbytes)
            handle.seek(info.offset)
            if handle.readinto(buffer) != info.nbytes:
                raise CheckpointError(
                    f"{info.file} ended inside tensor {info.name}",
                    "re-download or re-save the checkpoint",
                )
            if not buffer:
                return torch.empty(info.shape, dtype=dtype)
            return torch.frombuffer(buffer, dtype=dtype).reshape(info.shape)
        from safetensors import safe_open  # other dtypes (fp8, ...): the library's reader

        try:
            with safe_open(str(info.file), framework="pt", device="cpu") as fallback:
                return fallback.get_tensor(info.name)
        except Exception as exc:
            raise CheckpointError(
                f"cannot read tensor {info.name} from {info.file}: {exc}",
                "re-download or re-save the checkpoint; the file looks corrupt",
            ) from exc

    def chunks(self, handle: Any, info: TensorInfo, size: int) -> Iterator[torch.Tensor]:
        """Block by block, each its own positioned read: a large tensor is never whole."""
        import torch

        dtype = torch_dtype(info.dtype)
        numel = math.prod(info.shape)
        if dtype is None or info.offset < 0 or numel <= size:
            yield from super().chunks(handle, info, size)
            return
        width = info.nbytes // numel
        for start in range(0, numel, size):
            count = min(size, numel - start)
            buffer = bytearray(count * width)
            handle.seek(info.offset + start * width)
            if handle.readinto(buffer) != len(buffer):
                raise CheckpointError(
                    f"{info.file} ended inside tensor {info.name}", "re-download the checkpoint"
                )
            yield torch.frombuffer(buffer, dtype=dtype)


class TorchBinFormat(TensorFormat):
    """`pytorch_model*.bin`: a state dict loaded weights-only (the handle is the dict)."""

    name = "bin"
    suffixes = (".bin", ".pt", ".pth")
    patterns = ("pytorch_model*.bin",)

    def load(self, file: Path) -> dict[str, torch.Tensor]:
        """Load safely (weights_only), memory-mapped when the format allows."""
        import torch

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

    def header(self, file: Path) -> dict[str, TensorInfo]:
        return {
            n: TensorInfo(n, file, tuple(t.shape), str(t.dtype).removeprefix("torch."))
            for n, t in self.load(file).items()
        }

    def open(self, file: Path) -> Any:
        return self.load(file)

    def read(self, handle: Any, info: TensorInfo) -> torch.Tensor:
        return handle[info.name]


SAFETENSORS = SafetensorsFormat()
TORCH_BIN = TorchBinFormat()
FORMATS: tuple[TensorFormat, ...] = (SAFETENSORS, TORCH_BIN)
WEIGHT_PATTERNS = tuple(p for f in FORMATS for p in f.patterns)
INDEX_PATTERNS = tuple(p for f in FORMATS for p in f.index_patterns)


def format_for(file: str | Path) -> TensorFormat:
    """The reader for a weight file, chosen by its suffix: the one place a suffix is read."""
    path = Path(file)
    suffix = path.suffix.lower()
    for fmt in FORMATS:
        if suffix in fmt.suffixes:
            return fmt
    if suffix == ".gguf":
        hint = (
            "svdlora reads GGUF only as the built-in smollm2-135m; load the file with "
            "transformers (gguf_file=...) and save_pretrained it as safetensors"
        )
    else:
        hint = "save the model as safetensors (model.safetensors) or pytorch_model.bin"
    known = ", ".join(s for f in FORMATS for s in f.suffixes)
    raise CheckpointError(
        f"{path} is not a weight file svdlora reads (suffix {suffix or '(none)'}; "
        f"it reads {known})",
        hint,
    )


class ShardReader:
    """Reads tensors from a checkpoint's weight files, keeping only the current one open."""

    def __init__(self, formats: Mapping[Path, TensorFormat]) -> None:
        self.formats = formats
        self._file: Path | None = None
        self._format: TensorFormat | None = None
        self._handle: Any = None

    def _open(self, file: Path) -> Any:
        if file != self._file:
            self.close()
            fmt = self.formats[file]
            try:
                self._handle = fmt.open(file)
            except OSError as exc:
                raise CheckpointError(
                    f"cannot open {file}: {exc}", "check the file's permissions"
                ) from exc
            self._file, self._format = file, fmt
        return self._handle

    def read(self, info: TensorInfo) -> torch.Tensor:
        handle = self._open(info.file)
        assert self._format is not None
        return self._format.read(handle, info)

    def chunks(self, info: TensorInfo, size: int) -> Iterator[torch.Tensor]:
        handle = self._open(info.file)
        assert self._format is not None
        yield from self._format.chunks(handle, info, size)

    def close(self) -> None:
        if self._handle is not None and self._format is not None:
            self._format.close(self._handle)
        self._file = self._format = self._handle = None
