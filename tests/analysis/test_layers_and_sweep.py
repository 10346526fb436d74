"""layer-report aggregates agree with their rows; sweep reuses one decomposition."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from svdlora_cli.analysis.layers import intruder_count
from svdlora_cli.spectra import svd_job
from tests.conftest import assert_user_error, invoke, invoke_json


def test_layer_report_aggregates_match_rows(llama_pair, tmp_path):
    doc = invoke_json(
        "layer-report",
        "-b",
        llama_pair.base,
        "-t",
        llama_pair.tuned,
        "--rank",
        "2",
        "--sort",
        "energy",
        "-o",
        tmp_path,
    )
    rows = doc["modules"]
    assert len(rows) == 14
    energies = [r["energy"] for r in rows]
    assert energies == sorted(energies, reverse=True)
    for key, field in (
        ("by_module_type", "module_type"),
        ("by_group", "group"),
        ("by_layer", "layer"),
    ):
        for label, agg in doc[key].items():
            items = [r for r in rows if str(r[field]) == label]
            delta_sq = sum(r["delta_norm"] ** 2 for r in items)
            assert agg["count"] == len(items)
            assert agg["delta_norm"] == pytest.approx(math.sqrt(delta_sq))
            assert agg["energy"] == pytest.approx(
                sum(r["energy"] * r["delta_norm"] ** 2 for r in items) / delta_sq
            )
            assert agg["share"] == pytest.approx(sum(r["share"] for r in items))
            assert agg["mean_rank_90"] == pytest.approx(
                sum(r["rank_90"] for r in items) / len(items)
            )
    assert sum(r["share"] for r in rows) + doc["untargeted_share"] == pytest.approx(1.0)
    assert Path(doc["artifacts"]["heatmap"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_user_error(
        invoke("layer-report", "-b", llama_pair.base, "-t", llama_pair.tuned, "--sort", "size"),
        "--sort",
    )


def test_intruder_dimensions_count_new_directions():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(40, 30, generator=gen)
    small = base + 1e-3 * torch.randn(40, 30, generator=gen)
    assert intruder_count(base, small, k=5, threshold=0.5) == 0
    u = torch.linalg.svd(base, full_matrices=False).U  # 40 x 30
    weakest = u[:, -1:] @ torch.randn(1, 30, generator=gen) * 100
    # A direction of W_base itself is no intruder, even when the change makes it dominant.
    assert intruder_count(base, base + weakest, k=1, threshold=0.5) == 0
    new = torch.randn(40, 1, generator=gen)
    new = new - u @ (u.T @ new)  # orthogonal to all 30 left singular vectors of W_base
    new = new / new.norm()
    change = 100 * new @ torch.randn(1, 30, generator=gen)
    assert intruder_count(base, base + change, k=1, threshold=0.5) == 1


def test_layer_report_with_intruders(llama_pair, tmp_path):
    doc = invoke_json(
        "layer-report",
        "-b",
        llama_pair.base,
        "-t",
        llama_pair.tuned,
        "--intruders",
        "--intruder-k",
        "3",
        "-o",
        tmp_path,
    )
    assert all(
        r["intruders"] == 0 for r in doc["modules"]
    )  # small planted deltas keep the base's directions
    assert doc["by_module_type"]["q_proj"]["intruders"] == 0


def test_sweep_after_svd_computes_no_new_svd(llama_pair, tmp_path, monkeypatch):
    invoke_json(
        "svd", "-b", llama_pair.base, "-t", llama_pair.tuned, "--rank", "16", "-o", tmp_path / "svd"
    )
    calls = []
    real = svd_job.decompose
    monkeypatch.setattr(svd_job, "decompose", lambda *a, **k: calls.append(1) or real(*a, **k))
    doc = invoke_json(
        "sweep",
        "-b",
        llama_pair.base,
        "-t",
        llama_pair.tuned,
        "--ranks",
        "4,8,16",
        "-o",
        tmp_path / "sweep",
    )
    assert calls == [] and doc["cache"]["misses"] == 0
    energies = [r["total_energy"] for r in doc["ranks"]]
    assert [r["rank"] for r in doc["ranks"]] == [4, 8, 16] and energies == sorted(energies)
    svd8 = invoke_json(
        "svd", "-b", llama_pair.base, "-t", llama_pair.tuned, "--rank", "8", "-o", tmp_path / "s8"
    )
    assert doc["ranks"][1]["total_energy"] == pytest.approx(svd8["summary"]["total_energy"])
    assert Path(doc["artifacts"]["plot"]).read_bytes()[:4] == b"\x89PNG"
    assert_user_error(
        invoke("sweep", "-b", llama_pair.base, "-t", llama_pair.tuned, "--ranks", "0,4"), "--ranks"
    )


def test_sweep_train_writes_a_rank_study(tiny_llm, tiny_data, tmp_path):
    teacher = invoke_json(
        "train-teacher",
        "-m",
        tiny_llm,
        "--data-path",
        tiny_data[0],
        "--epochs",
        "1",
        "--max-length",
        "64",
        "--device",
        "cpu",
        "--learning-rate",
        "1e-2",
        "-o",
        tmp_path / "t",
        "--no-workspace",
    )
    final = teacher["arms"][0]["artifacts"]["final_model"]
    doc = invoke_json(
        "sweep",
        "-b",
        tiny_llm,
        "-t",
        final,
        "--ranks",
        "2,4",
        "--train",
        "--train-data",
        tiny_data[0],
        "--max-steps",
        "2",
        "--max-length",
        "64",
        "--device",
        "cpu",
        "-o",
        tmp_path / "sw",
    )
    study = doc["study"]
    assert [s["rank"] for s in study["svd"]] == [2, 4] and study["random"]["rank"] == 4
    assert all(math.isfinite(s["final_loss"]) and s["final_loss"] > 0 for s in study["svd"])
    assert Path(doc["artifacts"]["rank_study"]).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "sw" / "rank_study" / "rank_2" / "training_log_svd.csv").exists()
