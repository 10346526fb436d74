"""The device's peak: datasheet figures, the matmul probe, its cache and its re-measure."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from svdlora_cli.errors import InvalidOptionError
from svdlora_cli.training import device_peak as peaks
from svdlora_cli.training.device_peak import Peak, device_peak

# The device peak.


@pytest.fixture
def probes(monkeypatch, tmp_path):
    """Count the probe's runs; an empty memo and a cache file in tmp_path."""
    calls = []

    def probe(device, dtype):
        calls.append((device, dtype))
        return 1.25, 512

    monkeypatch.setattr(peaks, "_probe", probe)
    monkeypatch.setattr(peaks, "_MEMO", {})
    monkeypatch.setenv("SVDLORA_PEAK_CACHE", str(tmp_path / "peaks" / "device_peaks.json"))
    return calls


def test_cpu_peak_is_measured_once_then_cached(probes, tmp_path):
    peak = device_peak("cpu", torch.float32)
    assert peak.tflops == 1.25 and peak.source.startswith("measured: 512x512 matmul probe, ")
    assert device_peak(torch.device("cpu"), torch.float32) == peak and len(probes) == 1
    peaks._MEMO.clear()  # a new process: the file answers
    assert device_peak("cpu", torch.float32) == peak and len(probes) == 1
    stored = json.loads((tmp_path / "peaks" / "device_peaks.json").read_text())
    assert [v["tflops"] for v in stored.values()] == [1.25]
    device_peak("cpu", torch.bfloat16)  # another dtype is another entry
    assert len(probes) == 2


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"x": "y"}', ""])
def test_a_corrupt_cache_file_is_ignored_and_rewritten(probes, tmp_path, content):
    path = tmp_path / "peaks" / "device_peaks.json"
    path.parent.mkdir()
    path.write_text(content)
    assert device_peak("cpu", torch.float32).tflops == 1.25 and len(probes) == 1
    assert list(json.loads(path.read_text()).values())[-1]["tflops"] == 1.25


def test_an_unwritable_cache_is_not_an_error(probes, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("SVDLORA_PEAK_CACHE", str(tmp_path / "file" / "peaks.json"))
    assert device_peak("cpu", torch.float32).tflops == 1.25


def test_env_override(probes, monkeypatch):
    monkeypatch.setenv("SVDLORA_PEAK_TFLOPS", "123.5")
    assert device_peak("cpu", torch.float32) == Peak(123.5, "SVDLORA_PEAK_TFLOPS")
    assert probes == []
    monkeypatch.setenv("SVDLORA_PEAK_TFLOPS", "fast")
    with pytest.raises(InvalidOptionError, match="SVDLORA_PEAK_TFLOPS"):
        device_peak("cpu", torch.float32)


@pytest.mark.parametrize(
    ("name", "dtype", "tf32", "tflops", "source"),
    [
        ("NVIDIA H200", torch.bfloat16, False, 989.5, "NVIDIA H200 SXM datasheet, dense BF16"),
        ("NVIDIA H200 NVL", torch.bfloat16, False, 835.5, "NVIDIA H200 NVL datasheet, dense BF16"),
        ("NVIDIA H100 80GB HBM3", torch.float16, False, 989.5, "NVIDIA H100 SXM datasheet"),
        ("NVIDIA H100 PCIe", torch.bfloat16, False, 756.5, "NVIDIA H100 PCIe datasheet"),
        ("NVIDIA H100 NVL", torch.bfloat16, False, 835.5, "NVIDIA H100 NVL datasheet"),
        ("NVIDIA A100-SXM4-80GB", torch.bfloat16, False, 312.0, "NVIDIA A100 datasheet"),
        ("NVIDIA A100-SXM4-80GB", torch.float32, False, 19.5, "FP32"),
        ("NVIDIA A100-SXM4-80GB", torch.float32, True, 156.0, "dense TF32"),
        ("NVIDIA L40S", torch.bfloat16, False, 362.05, "NVIDIA L40S datasheet"),
        ("NVIDIA L4", torch.bfloat16, False, 121.0, "NVIDIA L4 datasheet"),
        ("NVIDIA A10", torch.bfloat16, False, 125.0, "NVIDIA A10 datasheet"),
        ("NVIDIA GeForce RTX 4090", torch.bfloat16, False, 165.2, "RTX 4090"),
        ("Tesla V100-SXM2-16GB", torch.float16, False, 125.0, "NVIDIA V100 SXM2 datasheet"),
        ("Tesla V100-PCIE-32GB", torch.float16, False, 112.0, "NVIDIA V100 PCIe datasheet"),
        ("Tesla T4", torch.float16, False, 65.0, "NVIDIA T4 datasheet"),
    ],
)
def test_listed_gpus_take_the_datasheet_figure(
    probes, monkeypatch, name, dtype, tf32, tflops, source
):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(peaks, "_tf32_enabled", lambda: tf32)
    peak = device_peak("cuda:0", dtype)
    assert peak.tflops == tflops and source in peak.source and probes == []


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("NVIDIA A10G", torch.bfloat16),  # not an A10
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", torch.bfloat16),  # a slice of the chip
        ("Tesla T4", torch.bfloat16),  # no bf16 tensor cores
        ("Some Future GPU", torch.bfloat16),
    ],
)
def test_other_gpus_are_measured(probes, monkeypatch, name, dtype):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert device_peak("cuda:0", dtype).source.startswith("measured:") and len(probes) == 1


def test_tf32_follows_torchs_switches():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert not peaks._tf32_enabled()
        torch.set_float32_matmul_precision("high")
        assert peaks._tf32_enabled()
    finally:
        torch.set_float32_matmul_precision(before)


def test_tf32_read_after_the_new_precision_api_was_used():
    """Once `fp32_precision` is set, torch raises on reads of the legacy flags; the peak's
    TF32 question is still answered (in a child: the setting sticks to the process)."""
    code = (
        "import torch; from svdlora_cli.training import device_peak as p; "
        "m = torch.backends.cuda.matmul; m.fp32_precision = 'tf32'; a = p._tf32_enabled(); "
        "m.fp32_precision = 'ieee'; b = p._tf32_enabled(); print(a, b)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "False"]


def test_probe_on_request_even_for_a_listed_gpu(probes, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setenv("SVDLORA_PEAK_TFLOPS", "probe")
    assert device_peak("cuda:0", torch.bfloat16).source.startswith("measured:")
    assert len(probes) == 1


def test_probe_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    tflops, n = peaks._probe(torch.device("cpu"), torch.float32)
    assert tflops > 0 and n == 1024
    assert torch.equal(torch.get_rng_state(), state)


def test_a_peak_measured_under_load_is_measured_again_when_a_run_beats_it(
    probes, tmp_path, monkeypatch
):
    """A probe that ran while the machine was busy set too low a peak; a run faster than
    it must not report MFU above 100% from it: the probe runs again, the higher stays."""
    low = device_peak("cpu", torch.float32)
    assert low.tflops == 1.25
    assert peaks.checked_peak("cpu", torch.float32, low, 1.0) is low  # no reason to doubt
    assert len(probes) == 1
    monkeypatch.setattr(peaks, "_probe", lambda device, dtype: (probes.append(1) or 4.0, 1024))
    fresh = peaks.checked_peak("cpu", torch.float32, low, 2.0)
    assert fresh.tflops == 4.0 and len(probes) == 2
    peaks._MEMO.clear()  # and the next process reads the new figure
    assert device_peak("cpu", torch.float32) == fresh
    listed = Peak(989.5, "NVIDIA H200 SXM datasheet, dense BF16")
    assert peaks.checked_peak("cpu", torch.float32, listed, 2000.0) is listed
