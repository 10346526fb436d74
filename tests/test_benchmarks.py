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
