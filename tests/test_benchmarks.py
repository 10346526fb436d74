"""The benchmark scripts run end to end on a tiny pair.

No speed targets here (they live in benchmarks/): only that the reported figures are
consistent, i.e. ratios equal the ratios of the reported times, times fit in the run.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def assert_seconds(figures: dict, keys: tuple[str, ...], wall: float) -> None:
    """Each timing is present, finite, positive and no longer than the run that measured it."""
    for key in keys:
        assert key in figures, key
        assert math.isfinite(figures[key]) and 0 < figures[key] <= wall, (key, figures[key], wall)


def assert_ratio(figure: float, numerator: float, denominator: float) -> None:
    """A reported ratio equals the ratio of the reported figures, to its 2-decimal rounding."""
    assert figure == pytest.approx(numerator / denominator, abs=0.005 + 1e-9)


def test_make_pair_and_bench_extract_run(tmp_path):
    pair = tmp_path / "pair"
    subprocess.run(
        [
            sys.executable,
            str(BENCH / "make_pair.py"),
            "--shape",
            "tiny",
            "--out",
            str(pair),
            "--shard-gb",
            "0.0002",
        ],
        check=True,
        capture_output=True,
    )
    index = json.loads((pair / "base" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded
    assert json.loads((pair / "base" / "config.json").read_text())["architectures"] == [
        "Qwen2ForCausalLM"
    ]
    out = tmp_path / "figures.json"
    start = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_extract.py"),
            "--pair",
            str(pair),
            "--rank",
            "8",
            "--warm-rank",
            "4",
            "--repeats",
            "1",
            "--json",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    wall = time.monotonic() - start
    figures = json.loads(out.read_text())
    assert figures["modules"] == 14 and figures["rank"] == 8 and figures["warm_rank"] == 4
    assert_seconds(figures, ("svdlora_cold_s", "svdlora_warm_s", "naive_s"), wall)
    assert_ratio(figures["speedup"], figures["naive_s"], figures["svdlora_cold_s"])
    assert_ratio(figures["cold_over_warm"], figures["svdlora_cold_s"], figures["svdlora_warm_s"])
    assert_ratio(figures["rss_ratio"], figures["naive_rss_mb"], figures["svdlora_cold_rss_mb"])
    assert figures["max_energy_diff_pp"] < 0.05


@pytest.mark.slow  # a whole benchmark script end to end; run with -m slow
def test_bench_distributed_runs_and_adapters_match(tmp_path):
    pair = tmp_path / "pair"
    subprocess.run(
        [sys.executable, str(BENCH / "make_pair.py"), "--shape", "tiny", "--out", str(pair)],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "figures.json"
    start = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_distributed.py"),
            "--pair",
            str(pair),
            "--rank",
            "4",
            "--repeats",
            "1",
            "--json",
            str(out),
        ],
        cwd=BENCH,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    wall = time.monotonic() - start
    figures = json.loads(out.read_text())
    assert figures["adapter_identical"] is True
    assert figures["processes"] == 2
    timings = ("single_s", "launch_s", "single_same_threads_s")
    assert_seconds(figures, timings, wall)
    for key, label in zip(timings, ("single", "launch", "single_same_threads"), strict=True):
        assert len(figures["walls"][label]) == 1  # one repeat: the median is that run
        assert figures[key] == pytest.approx(statistics.median(figures["walls"][label]), abs=0.01)
    assert_ratio(figures["speedup_vs_single"], figures["single_s"], figures["launch_s"])
    assert_ratio(
        figures["speedup_vs_same_threads"], figures["single_same_threads_s"], figures["launch_s"]
    )
    # Each rank's decomposition seconds were spent inside the launch that was timed.
    assert max(figures["rank_seconds"][0].values()) <= figures["launch_s"]
    assert sorted(figures["rank_seconds"][0]) == ["0", "1"]  # both ranks decomposed
    assert figures["max_over_mean_load"] >= 1.0


@pytest.mark.slow  # a whole benchmark script end to end; run with -m slow
def test_gpu_check_passes_on_cpu_processes(tmp_path):
    """The prepared device check runs its steps on 2 CPU processes (no speed step)."""
    options = ["--device", "cpu", "--processes", "2", "--skip-speed", f"--out={tmp_path}"]
    done = subprocess.run(
        [sys.executable, str(BENCH / "gpu_check.py"), *options],
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert done.returncode == 0, json.dumps(summary)[-3000:]
    assert summary["teacher"]["same_steps"] and summary["teacher"]["weight_gap"] < 1e-5
    assert summary["svd"]["adapter_identical"]
    assert summary["resume"]["checkpointed"] and summary["resume"]["fsdp_gap"] < 1e-6


def _run_tiny(script: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(BENCH / script), "--model", "tiny", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_training_step_benchmark_and_profile_run_on_the_tiny_model(tmp_path):
    """bench_train_steps (both steps in one process) and profile_train, both ways."""
    _run_tiny("bench_train_steps.py", "--steps", "3", "--json", str(tmp_path / "s.json"))
    steps = json.loads((tmp_path / "s.json").read_text())
    assert_ratio(steps["ratio"], steps["svdlora_tokens_per_s"], steps["minimal_tokens_per_s"])
    assert steps["per_step_ratio_min"] <= steps["per_step_ratio_median"]
    assert steps["per_step_ratio_median"] <= steps["per_step_ratio_max"]
    for extra in ((), ("--minimal",)):
        out = _run_tiny("profile_train.py", "--steps", "1", "--rows", "3", *extra).stdout
        assert "aten::mm" in out and "MFLOP per real token" in out


@pytest.mark.slow  # three training subprocesses; run with -m slow
def test_end_to_end_training_benchmark_runs_on_the_tiny_model(tmp_path):
    """bench_train: the minimal loop and `svdlora train` with and without packing."""
    out = str(tmp_path / "e.json")
    _run_tiny("bench_train.py", "--steps", "2", "--repeats", "1", "--json", out)
    e2e = json.loads((tmp_path / "e.json").read_text())
    assert_ratio(e2e["ratio"], e2e["svdlora_tokens_per_s"], e2e["minimal_tokens_per_s"])
    assert_ratio(
        e2e["ratio_no_packing"], e2e["svdlora_no_packing_tokens_per_s"], e2e["minimal_tokens_per_s"]
    )
