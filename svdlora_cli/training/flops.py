"""FLOPs of a training step counted from the model's shapes, the device's peak, and MFU.

Convention (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", sec. 2.1;
Chowdhery et al. 2022, PaLM, appendix B; Hoffmann et al. 2022, Chinchilla, appendix F):
a multiply-add is 2 FLOPs, and per token

- a weight of shape (out, in) costs 2*in*out in the forward pass and 2*in*out more for
  the gradient of its input; a trainable weight adds 2*in*out for its own gradient.
  So a frozen weight costs 4*in*out per token and a trainable one 6*in*out (the "6N"
  of a full fine-tune). LoRA layers count their frozen base weight plus the trainable
  A (r x in) and B (out x r); dropout and the alpha/r scaling are elementwise.
- causal attention: a row of length L has L(L+1)/2 query-key pairs; QK^T and AV cost
  2 * 2 * d_attn FLOPs per pair and layer in the forward pass, with d_attn the query
  heads times head_dim (GQA shares keys and values, not the products). The backward
  pass costs twice the forward, as for the weights.
- the LM head runs only where logits are taken (`logit_positions`): 4*V*d per position
  when frozen, 6*V*d when trainable (a tied head follows its embedding's requires_grad).
- embedding lookups, norms, activations, softmax, rotary and other elementwise work
  count 0, and so does recomputation under gradient checkpointing (model FLOPs, not
  hardware FLOPs).

Only real tokens count: padding and the attention between packed rows are not work the
model needs. MFU is these FLOPs per second over the device's dense matrix-product peak.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["ModelFlops", "Peak", "checked_peak", "device_peak", "utilisation"]


@dataclass(frozen=True)
class Weight:
    """One matrix product applied at every token: an (out, in) weight."""

    in_features: int
    out_features: int
    trainable: bool

    def training(self) -> int:
        """Forward, input gradient and (when trainable) weight gradient, per token."""
        return (6 if self.trainable else 4) * self.in_features * self.out_features

    def forward(self) -> int:
        return 2 * self.in_features * self.out_features


def _unwrap(model: nn.Module) -> nn.Module:
    """The model under torch.compile and DDP/FSDP/accelerate wrappers (a PeftModel stays)."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and not hasattr(model, "config"):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of an nn.Linear (or subclass) or a GPT-2 Conv1D (weight stored as (in, out))."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):
        return int(module.nx), int(module.nf)
    return None


def _weights(module: nn.Module, skip: nn.Module | None = None) -> Iterator[Weight]:
    """Every per-token weight under `module` except `skip`; PEFT LoRA layers as base + A + B."""
    if module is skip:
        return
    if hasattr(module, "base_layer") and hasattr(module, "lora_A"):
        yield from _weights(module.base_layer, skip)
        merged = set(getattr(module, "merged_adapters", ()))
        if not getattr(module, "disable_adapters", False):
            for name in module.active_adapters:
                if name in module.lora_A and name not in merged:
                    yield from _weights(module.lora_A[name], skip)
                    yield from _weights(module.lora_B[name], skip)
        return
    if hasattr(module, "original_module") and hasattr(module, "modules_to_save"):
        # PEFT's modules_to_save: the forward runs the active trained copy, else the original.
        copies = module.modules_to_save
        active = [n for n in getattr(module, "active_adapters", ()) if n in copies]
        disabled = getattr(module, "disable_adapters", False)
        inner = module.original_module if disabled or not active else copies[active[0]]
        yield from _weights(inner, skip)
        return
    shape = _linear_shape(module)
    if shape is not None:
        yield Weight(*shape, trainable=bool(module.weight.requires_grad))
        return
    for child in module.children():
        yield from _weights(child, skip)


def _total(weights: Sequence[Weight], training: bool) -> int:
    return sum(w.training() if training else w.forward() for w in weights)


def _pairs(row_lengths: Sequence[int]) -> int:
    """Causal query-key pairs: sum over rows of L(L+1)/2."""
    return sum(int(n) * (int(n) + 1) // 2 for n in row_lengths)


@dataclass(frozen=True)
class ModelFlops:
    """The shapes that decide a step's FLOPs: decoder weights, LM head, attention width."""

    weights: tuple[Weight, ...]
    head: tuple[Weight, ...]
    layers: int
    attention_width: int

    @classmethod
    def from_model(cls, model: nn.Module) -> ModelFlops:
        """Read a transformers causal LM (possibly a PeftModel, possibly DDP-wrapped)."""
        model = _unwrap(model)
        config = model.config
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        heads = int(config.num_attention_heads)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        head_module = model.get_output_embeddings()
        return cls(
            weights=tuple(_weights(model, skip=head_module)),
            head=tuple(_weights(head_module)) if head_module is not None else (),
            layers=int(config.num_hidden_layers),
            attention_width=heads * int(head_dim),
        )

    def _attention(self, row_lengths: Sequence[int]) -> int:
        """Forward FLOPs of QK^T and AV over causal rows, all layers."""
        return self.layers * 2 * 2 * self.attention_width * _pairs(row_lengths)

    def micro_batch(self, row_lengths: Sequence[int], logit_positions: int) -> float:
        """FLOPs of one forward + backward over rows of these real lengths (no padding)."""
        tokens = sum(int(n) for n in row_lengths)
        return float(
            tokens * _total(self.weights, True)
            + 3 * self._attention(row_lengths)
            + int(logit_positions) * _total(self.head, True)
        )

    def forward(self, row_lengths: Sequence[int], logit_positions: int) -> float:
        """FLOPs of a forward pass only (evaluation, generation's prefill)."""
        tokens = sum(int(n) for n in row_lengths)
        return float(
            tokens * _total(self.weights, False)
            + self._attention(row_lengths)
            + int(logit_positions) * _total(self.head, False)
        )


@dataclass(frozen=True)
class Peak:
    """A device's peak dense matrix-product rate for one dtype, and where it comes from."""

    tflops: float
    source: str


@dataclass(frozen=True)
class _Datasheet:
    """Dense (no 2:4 sparsity) TFLOP/s from NVIDIA's datasheets; None: no such tensor cores."""

    pattern: str
    name: str
    fp32: float
    tf32: float | None
    fp16: float | None
    bf16: float | None
    document: str = "datasheet"


# NVIDIA lists Hopper, Ada and L4 tensor-core figures "with sparsity": the dense ones are half.
# First match wins, so a variant comes before its family.
_DATASHEETS = (
    _Datasheet(r"\bH200 NVL\b", "NVIDIA H200 NVL", 60.0, 417.5, 835.5, 835.5),
    _Datasheet(r"\bH200\b", "NVIDIA H200 SXM", 67.0, 494.5, 989.5, 989.5),
    _Datasheet(r"\bH100 NVL\b", "NVIDIA H100 NVL", 60.0, 417.5, 835.5, 835.5),
    _Datasheet(r"\bH100\b.*\bPCIe\b", "NVIDIA H100 PCIe", 51.0, 378.0, 756.5, 756.5),
    _Datasheet(r"\bH100\b", "NVIDIA H100 SXM", 67.0, 494.5, 989.5, 989.5),
    _Datasheet(r"\bA100\b", "NVIDIA A100", 19.5, 156.0, 312.0, 312.0),
    _Datasheet(r"\bL40S\b", "NVIDIA L40S", 91.6, 183.0, 362.05, 362.05),
    _Datasheet(r"\bL4\b", "NVIDIA L4", 30.3, 60.0, 121.0, 121.0),
    _Datasheet(r"\bA10\b", "NVIDIA A10", 31.2, 62.5, 125.0, 125.0),
    _Datasheet(
        r"\bRTX 4090\b(?! ?D\b)",
        "NVIDIA GeForce RTX 4090",
        82.6,
        82.6,
        165.2,
        165.2,
        "Ada architecture whitepaper (FP32 accumulate)",
    ),
    _Datasheet(r"\bV100S\b", "NVIDIA V100S PCIe", 16.4, None, 130.0, None),
    _Datasheet(r"\bV100\b.*\bPCIE\b", "NVIDIA V100 PCIe", 14.0, None, 112.0, None),
    _Datasheet(r"\bV100\b", "NVIDIA V100 SXM2", 15.7, None, 125.0, None),
    _Datasheet(r"\bT4\b", "NVIDIA T4", 8.1, None, 65.0, None),
)

_MEMO: dict[str, Peak] = {}
_OVERRIDE = "SVDLORA_PEAK_TFLOPS"


def _tf32_enabled() -> bool:
    """Whether fp32 matmuls may use TF32 tensor cores (torch's default is no)."""
    matmul = torch.backends.cuda.matmul
    return (
        bool(matmul.allow_tf32)
        or getattr(matmul, "fp32_precision", "") == "tf32"
        or torch.get_float32_matmul_precision() in ("high", "medium")
    )


def _datasheet_peak(name: str, dtype: torch.dtype) -> Peak | None:
    """The table's figure for a CUDA device name and dtype; None when not listed."""
    if "MIG" in name:  # a slice of the GPU: the whole chip's figure would overstate it
        return None
    sheet = next((s for s in _DATASHEETS if re.search(s.pattern, name, re.IGNORECASE)), None)
    if sheet is None:
        return None
    if dtype == torch.float32:
        if _tf32_enabled() and sheet.tf32 is not None:
            value, label = sheet.tf32, "dense TF32 (TF32 matmul on)"
        else:
            value, label = sheet.fp32, "FP32"
    elif dtype in (torch.bfloat16, torch.float16):
        value = sheet.bf16 if dtype == torch.bfloat16 else sheet.fp16
        label = f"dense {'BF16' if dtype == torch.bfloat16 else 'FP16'}"
    else:
        value = None
    if value is None:
        return None
    return Peak(value, f"{sheet.name} {sheet.document}, {label}")


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"cpu: {_cpu_name()} ({torch.get_num_threads()} threads)"
    return device.type


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    elif device.type == "xpu":
        torch.xpu.synchronize(device)


def _timed(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, reps: int) -> float:
    _synchronize(a.device)
    start = time.perf_counter()
    for _ in range(reps):
        torch.matmul(a, b, out=out)
    _synchronize(a.device)
    return time.perf_counter() - start


@torch.no_grad()
def _probe(device: torch.device, dtype: torch.dtype) -> tuple[float, int]:
    """Best TFLOP/s of single n x n matmuls (global RNG untouched): n = 1024 on a CPU
    (about 10 ms in fp32 on 2 cores), 8192 on an accelerator; two warm-ups, then the
    fastest of at least 5 timings spread over about 0.3 s, so a moment of load on a
    shared machine does not set the peak."""
    n = 1024 if device.type == "cpu" else 8192
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device, dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(2):
        _timed(a, b, out, 1)
    best = math.inf
    deadline = time.perf_counter() + 0.3
    for attempt in range(200):
        best = min(best, max(_timed(a, b, out, 1), 1e-9))
        if attempt >= 4 and time.perf_counter() > deadline:
            break
    return 2 * n**3 / best / 1e12, n


def _cache_file() -> Path:
    path = Path(os.environ.get("SVDLORA_PEAK_CACHE") or "~/.cache/svdlora/device_peaks.json")
    path = path.expanduser()
    return path / "device_peaks.json" if path.is_dir() else path


def _read_cache(path: Path) -> dict[str, Any]:
    """The cached peaks; an unreadable or corrupt file counts as empty (it gets rewritten)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _cached(entry: Any) -> Peak | None:
    if not isinstance(entry, dict):
        return None
    tflops, source = entry.get("tflops"), entry.get("source")
    if isinstance(tflops, (int, float)) and tflops > 0 and isinstance(source, str):
        return Peak(float(tflops), source)
    return None


def _store(path: Path, key: str, peak: Peak) -> None:
    """Add one entry to the cache file atomically; a failed write only loses the cache."""
    from ..errors import SvdloraError
    from ..files import write_json

    data = _read_cache(path)
    data[key] = {"tflops": peak.tflops, "source": peak.source}
    with contextlib.suppress(OSError, SvdloraError):
        write_json(path, data)


def _override() -> Peak | None:
    from ..errors import InvalidOptionError

    text = os.environ.get(_OVERRIDE, "").strip()
    if not text or text.lower() == "probe":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InvalidOptionError(
            f"{_OVERRIDE}={text!r} is not a positive number of TFLOP/s",
            f"set it to the device's dense peak, e.g. {_OVERRIDE}=989.5, or 'probe', or unset it",
        )
    return Peak(value, _OVERRIDE)


def device_peak(device: torch.device | str, dtype: torch.dtype) -> Peak:
    """Peak dense matmul TFLOP/s of `device` in `dtype`.

    SVDLORA_PEAK_TFLOPS overrides it. Listed NVIDIA GPUs take the datasheet figure (fp32 is
    the TF32 figure only when TF32 matmuls are on); anything else, or every device with
    SVDLORA_PEAK_TFLOPS=probe, is measured once with a matmul probe and cached per device
    name, dtype and torch version (in memory and in SVDLORA_PEAK_CACHE, by default
    ~/.cache/svdlora/device_peaks.json).
    """
    override = _override()
    if override is not None:
        return override
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    name = _device_name(device)
    if device.type == "cuda" and os.environ.get(_OVERRIDE, "").strip().lower() != "probe":
        listed = _datasheet_peak(name, dtype)
        if listed is not None:
            return listed
    key = f"{name} | {str(dtype).removeprefix('torch.')} | torch {torch.__version__}"
    if key in _MEMO:
        return _MEMO[key]
    path = _cache_file()
    peak = _cached(_read_cache(path).get(key))
    if peak is None:
        peak = _measure(device, dtype, key, path)
    _MEMO[key] = peak
    return peak


def _measure(device: torch.device, dtype: torch.dtype, key: str, path: Path) -> Peak:
    tflops, n = _probe(device, dtype)
    today = datetime.date.today().isoformat()
    peak = Peak(float(f"{tflops:.4g}"), f"measured: {n}x{n} matmul probe, {today}")
    _store(path, key, peak)
    return peak


def checked_peak(
    device: torch.device | str, dtype: torch.dtype, peak: Peak, achieved: float
) -> Peak:
    """`peak`, or a fresh probe when a run went faster than a measured peak allows (the
    probe that set it ran under load): the higher of the two is kept and cached. A peak
    from the datasheet or SVDLORA_PEAK_TFLOPS is never second-guessed."""
    if achieved <= peak.tflops or not peak.source.startswith("measured"):
        return peak
    device = torch.device(device)
    name = _device_name(device)
    key = f"{name} | {str(dtype).removeprefix('torch.')} | torch {torch.__version__}"
    fresh = _measure(device, dtype, key, _cache_file())
    best = fresh if fresh.tflops >= peak.tflops else peak
    _store(_cache_file(), key, best)
    _MEMO[key] = best
    return best


def utilisation(flops: float, seconds: float, peak: Peak) -> dict[str, Any]:
    """Achieved TFLOP/s (4 significant digits) and its share of the peak (MFU)."""
    achieved = flops / seconds / 1e12 if seconds > 0 else 0.0
    return {
        "tflops": float(f"{achieved:.4g}"),
        "mfu": round(achieved / peak.tflops, 4) if peak.tflops > 0 else 0.0,
        "peak_tflops": peak.tflops,
        "peak_source": peak.source,
    }
