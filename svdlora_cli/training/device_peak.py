"""The device's peak dense matrix-product rate, for MFU: a datasheet figure for known
NVIDIA GPUs, else a short matmul probe, cached per device, dtype and torch version."""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["Peak", "checked_peak", "device_peak"]


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
    """Whether fp32 matmuls may use TF32 tensor cores (torch's default is no).

    The new API (`fp32_precision`, torch >= 2.9) is read first: once it has been set,
    torch raises on reads of the legacy flags (a mix of the two APIs)."""
    matmul = torch.backends.cuda.matmul
    if getattr(matmul, "fp32_precision", "") == "tf32":
        return True
    try:
        return bool(matmul.allow_tf32) or torch.get_float32_matmul_precision() in (
            "high",
            "medium",
        )
    except RuntimeError:  # the new API was used, and not for TF32
        return False


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
