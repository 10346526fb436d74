"""The benchmark scripts run end to end on a tiny pair (no timing asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


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
    figures = json.loads(out.read_text())
    assert figures["modules"] == 14 and figures["speedup"] > 0
    assert figures["max_energy_diff_pp"] < 0.05


def test_bench_distributed_runs_and_adapters_match(tmp_path):
    pair = tmp_path / "pair"
    subprocess.run(
        [sys.executable, str(BENCH / "make_pair.py"), "--shape", "tiny", "--out", str(pair)],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "figures.json"
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
    figures = json.loads(out.read_text())
    assert figures["adapter_identical"] is True
    assert figures["processes"] == 2 and figures["launch_s"] > 0
    assert sorted(figures["rank_seconds"][0]) == ["0", "1"]  # both ranks decomposed
    assert figures["max_over_mean_load"] >= 1.0


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
