"""FP8 checkpoints: dequantize the formats transformers loads; refuse every other quantized one.

A quantized weight is stored as codes plus scales, and dW taken from the codes is
meaningless. Three FP8 layouts are dequantized exactly as transformers does (codes
and scales promoted to fp32, multiplied, cast to the model's dtype):

- `fp8` (finegrained FP8, DeepSeek-V3 style): `weight_scale_inv` per block of
  `weight_block_size` (default 128 x 128, edge blocks partial) or one per tensor;
- `fbgemm_fp8`: `weight_scale` per output row, shape (out, 1);
- `compressed-tensors` with float8 weights: `weight_scale` per tensor, per channel
  or per block.

Scales may be fp32/bf16 or E8M0 exponents (`uint8` byte b means 2**(b - 127)).
Activation and KV-cache scales are not weights and leave the tensor index too, so
they are never reported as changed tensors. `Quantization.reader` wraps a checkpoint's
format reader (`formats.py`) so that a weight reads dequantized, never as its codes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..errors import CheckpointError
from .formats import TensorInfo, TensorSource

FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "float64", "float32", "float16", "bfloat16"})
FP8_DTYPES = frozenset({"F8_E4M3", "F8_E5M2", "float8_e4m3fn", "float8_e5m2"})
_WEIGHT_SCALES = {"fp8": "weight_scale_inv", "fbgemm_fp8": "weight_scale"}
_OTHER_SCALES = ("input_scale", "activation_scale", "k_scale", "v_scale", "output_scale")
_MODEL_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_SAFETENSORS_NAMES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
_TORCH_NAMES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "float64": "F64"}
_HINT = (
    "use the unquantized (bf16/fp16/fp32) checkpoint, or dequantize it first "
    "(load it with transformers and save_pretrained); svdlora reads FP8 in the fp8, "
    "fbgemm_fp8 and compressed-tensors float8 formats"
)


@dataclass(frozen=True)
class Quantization:
    """How a checkpoint's quantized weights map to their scales, and the dtype they load in."""

    method: str
    scales: Mapping[str, TensorInfo]  # weight tensor name -> its scale tensor
    block: tuple[int, int] | None
    dtype: torch.dtype

    def describe(self) -> str:
        layout = (
            f"{self.block[0]}x{self.block[1]} blocks" if self.block else "per-tensor/row scales"
        )
        return f"{self.method} ({layout}), dequantized to {str(self.dtype).removeprefix('torch.')}"

    def dequantize(self, name: str, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """codes * scale in fp32, broadcast per tensor, row or block; cast to the model dtype."""
        return dequantize(name, codes, scale, self.block).to(self.dtype)

    def reader(self, source: TensorSource) -> DequantizingReader:
        """`source`, with FP8 weights read dequantized."""
        return DequantizingReader(source, self)


class DequantizingReader:
    """A tensor source over a format reader: FP8 weights come dequantized, others as stored."""

    def __init__(self, source: TensorSource, quantization: Quantization) -> None:
        self.source = source
        self.quantization = quantization

    def read(self, info: TensorInfo) -> torch.Tensor:
        scale = self.quantization.scales.get(info.name)
        raw = self.source.read(info)
        if scale is None:
            return raw
        return self.quantization.dequantize(info.name, raw, self.source.read(scale))

    def chunks(self, info: TensorInfo, size: int) -> Iterator[torch.Tensor]:
        """A dequantized weight is read whole (its scale spans it), then split."""
        if info.name in self.quantization.scales:
            yield from self.read(info).reshape(-1).split(size)
        else:
            yield from self.source.chunks(info, size)


class Indexed(Protocol):
    """A checkpoint as far as these checks need it: its tensor index and quantization."""

    @property
    def tensors(self) -> Mapping[str, TensorInfo]: ...

    @property
    def quantization(self) -> Quantization | None: ...


def _scale_fp32(scale: torch.Tensor) -> torch.Tensor:
    if scale.dtype == torch.uint8:  # E8M0 exponents stored as bytes
        return (scale.to(torch.float32) - 127.0).exp2()
    return scale.to(torch.float32)


def dequantize(
    name: str, codes: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None = None
) -> torch.Tensor:
    """fp32 weight from FP8 codes and a per-tensor, per-row or per-block scale."""
    w, s = codes.to(torch.float32), _scale_fp32(scale)
    if s.numel() == 1:
        return w * s.reshape(())
    if w.dim() != 2:
        raise CheckpointError(f"{name}: cannot dequantize a {w.dim()}-D FP8 tensor", _HINT)
    m, n = w.shape
    if s.numel() == m and s.dim() <= 2 and s.shape[0] == m and (s.dim() == 1 or s.shape[1] == 1):
        return w * s.reshape(m, 1)
    if s.dim() == 2:
        a, b = s.shape
        if block and (math.ceil(m / block[0]), math.ceil(n / block[1])) == (a, b):
            bm, bn = block
        elif m % a == 0 and n % b == 0:
            bm, bn = m // a, n // b
        else:
            bm = bn = 0
        if bm and bn:
            full = s.repeat_interleave(bm, dim=0)[:m].repeat_interleave(bn, dim=1)[:, :n]
            return w * full
    raise CheckpointError(
        f"{name}: scale of shape {list(scale.shape)} does not fit the weight's {[m, n]}",
        "the checkpoint's scales do not match its quantization_config; re-export it",
    )


def _compressed_block(qc: Mapping[str, Any]) -> tuple[bool, tuple[int, int] | None]:
    """Whether a compressed-tensors config is float8 weights only, and its block if any."""
    if qc.get("format") not in ("float-quantized", "naive-quantized"):
        return False, None
    blocks = set()
    for group in (qc.get("config_groups") or {}).values():
        weights = (group or {}).get("weights") or {}
        if weights.get("type") != "float" or int(weights.get("num_bits", 0)) != 8:
            return False, None
        if weights.get("block_structure"):
            blocks.add(tuple(int(x) for x in weights["block_structure"]))
    return True, (blocks.pop() if len(blocks) == 1 else None)


def read_quantization(
    folder: Any, config: Mapping[str, Any], tensors: dict[str, TensorInfo]
) -> tuple[Quantization | None, dict[str, TensorInfo]]:
    """The checkpoint's quantization (None if it has none) and its index without scale tensors."""
    qc = config.get("quantization_config")
    if not qc:
        return None, tensors
    method = str(qc.get("quant_method", "")) if isinstance(qc, Mapping) else ""
    block: tuple[int, int] | None = None
    if method == "fp8":
        size = qc.get("weight_block_size", (128, 128))
        block = (int(size[0]), int(size[1])) if size else None
    elif method == "compressed-tensors":
        supported, block = _compressed_block(qc)
        if not supported:
            method = f"compressed-tensors ({qc.get('format', 'unknown format')})"
    if method not in ("fp8", "fbgemm_fp8", "compressed-tensors"):
        raise CheckpointError(
            f"{folder} is quantized with {method or 'an unknown method'} (quantization_config "
            "in config.json); dW cannot be taken from quantized codes",
            _HINT,
        )
    suffix = _WEIGHT_SCALES.get(method, "weight_scale")
    scales, kept = {}, {}
    for name, info in tensors.items():
        if name.endswith("." + suffix):
            scales[name.removesuffix(suffix) + "weight"] = info
        elif not name.endswith(tuple("." + s for s in _OTHER_SCALES)):
            kept[name] = info
    orphans = [n for n in scales if n not in kept]
    if orphans:
        raise CheckpointError(f"{folder}: scale without a weight for {orphans[0]}", _HINT)
    if not scales:  # saved dequantized: plain weights (FP8 ones without scales are refused)
        return None, kept
    model_dtype = _MODEL_DTYPES.get(str(config.get("dtype") or config.get("torch_dtype")))
    return Quantization(method, scales, block, model_dtype or torch.float32), kept


def loaded_dtype(checkpoint: Indexed, name: str) -> str:
    """The dtype a tensor reads in: as stored, or the model's dtype for a dequantized one."""
    quant = checkpoint.quantization
    if quant is not None and name in quant.scales:
        return _SAFETENSORS_NAMES[quant.dtype]
    dtype = checkpoint.tensors[name].dtype
    return _TORCH_NAMES.get(dtype, dtype)


def reads_float(checkpoint: Indexed, name: str) -> bool:
    """Whether a tensor reads as floating point: stored so, or dequantized from FP8."""
    quant = checkpoint.quantization
    return checkpoint.tensors[name].dtype in FLOAT_DTYPES or (
        quant is not None and name in quant.scales
    )


def check_targets_readable(checkpoint: Indexed, names: Iterable[str], side: str) -> None:
    """Refuse targets stored as integer, packed or unscaled FP8 data: never subtract codes."""
    for name in names:
        if name in checkpoint.tensors and not reads_float(checkpoint, name):
            dtype = checkpoint.tensors[name].dtype
            what = "FP8 without scales" if dtype in FP8_DTYPES else "quantized or packed data"
            raise CheckpointError(
                f"target {name} of the {side} model is stored as {dtype} ({what}); "
                "dW cannot be taken from quantized codes",
                _HINT,
            )
