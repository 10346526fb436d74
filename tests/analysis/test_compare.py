"""compare on synthetic logs with known answers, and geometry against Eckart-Young."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from svdlora_cli.analysis.compare import compare_runs, find_logs
from svdlora_cli.analysis.geometry import adapter_geometry
from svdlora_cli.artifacts import write_svd_outputs
from svdlora_cli.spectra.svd_step import run_svd
from svdlora_cli.store.cache import ArtifactCache
from svdlora_cli.training.steplog import StepRow, write_step_log
from tests.conftest import invoke_json


def _log(
    folder: Path, name: str, losses: list[float], evals: dict[int, float] | None = None
) -> None:
    rows = [
        StepRow(step=i, epoch=i / 4, loss=v, eval_loss=(evals or {}).get(i), tokens=100 * i)
        for i, v in enumerate(losses)
    ]
    write_step_log(folder / f"training_log_{name}.csv", rows)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    (tmp_path / "teacher").mkdir()
    _log(tmp_path / "teacher", "teacher", [2.0, 1.5, 1.0, 0.6, 0.5], {0: 2.0, 4: 0.6})
    out = tmp_path / "training_results"
    out.mkdir()
    _log(out, "random_seed0", [2.0, 1.9, 1.6, 1.2, 1.0], {0: 2.0, 4: 1.2})
    _log(out, "random_seed1", [2.0, 1.8, 1.5, 1.1, 0.9], {0: 2.0, 4: 1.0})
    _log(out, "svd_seed0", [0.9, 0.7, 0.6, 0.55, 0.54], {0: 1.0, 4: 0.7})
    _log(out, "svd_seed1", [0.9, 0.6, 0.58, 0.6, 0.56], {0: 1.0, 4: 0.8})
    return tmp_path


def test_figures_on_synthetic_logs(run_dir):
    runs = find_logs(run_dir)
    assert [r.name for r in runs] == [
        "teacher",
        "random_seed0",
        "random_seed1",
        "svd_seed0",
        "svd_seed1",
    ]
    doc = compare_runs(runs)
    assert doc["target_loss"] == pytest.approx(0.55)  # 1.1 x teacher's final loss 0.5
    arms = {a["arm"]: a for a in doc["arms"]}
    svd, random = arms["svd"], arms["random"]
    assert svd["runs"][0]["steps_to_target"] == 3 and svd["runs"][1]["steps_to_target"] is None
    assert svd["never_reached"] == 1 and svd["steps_to_target"] == 3
    assert random["steps_to_target"] is None and random["never_reached"] == 2
    assert svd["runs"][0]["tokens_to_target"] == 300
    assert random["runs"][0]["auc"] == pytest.approx(
        (2.0 + 1.9) / 2 + (1.9 + 1.6) / 2 + (1.6 + 1.2) / 2 + (1.2 + 1.0) / 2
    )
    assert random["final_loss"] == pytest.approx(0.95)
    assert svd["final_loss"] == pytest.approx(0.55)
    assert svd["spread"]["final_loss"]["std"] == pytest.approx(math.sqrt(2) * 0.01)
    # Same-seed pairing: svd_seed0 vs random_seed0.
    assert svd["runs"][0]["improvement_over_random_pct"] == pytest.approx(100 * (1.0 - 0.54) / 1.0)
    assert svd["runs"][0]["gap_to_teacher_pct"] == pytest.approx(100 * (0.54 - 0.5) / 0.5)
    # Gap recovered on eval: base 2.0 (random step 0), teacher 0.6.
    assert svd["runs"][0]["recovered_start"] == pytest.approx((2.0 - 1.0) / (2.0 - 0.6))
    assert svd["runs"][1]["recovered_end"] == pytest.approx((2.0 - 0.8) / (2.0 - 0.6))
    assert random["recovered_start"] == pytest.approx(0.0)
    ci = svd["spread"]["final_eval_loss"]
    assert ci["ci_low"] < 0.75 < ci["ci_high"]


def test_explicit_target_and_cli_outputs(run_dir):
    doc = invoke_json("compare", run_dir, "--target-loss", "1.2")
    arms = {a["arm"]: a for a in doc["arms"]}
    assert arms["random"]["runs"][0]["steps_to_target"] == 3
    assert doc["target_source"] == "--target-loss"
    for key in ("plot", "report", "markdown", "json"):
        assert Path(doc["artifacts"][key]).exists()
    assert Path(doc["artifacts"]["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = Path(doc["artifacts"]["report"]).read_text()
    assert "Initial loss" in report and "svd vs random" in report
    assert "| Metric |" in Path(doc["artifacts"]["markdown"]).read_text()
    assert json.loads(Path(doc["artifacts"]["json"]).read_text())["target_loss"] == 1.2


def _summary(folder: Path, name: str, **summary: object) -> None:
    model_dir = folder / ("final_model" if name == "teacher" else f"final_model_{name}")
    model_dir.mkdir()
    (model_dir / "svdlora_run.json").write_text(json.dumps({"summary": summary}))


def test_compare_carries_throughput_and_mfu_from_the_run_summaries(run_dir):
    out = run_dir / "training_results"
    speed = {"flops_per_token": 6.5e9, "peak_tflops": 989.5, "peak_source": "NVIDIA H200"}
    _summary(run_dir / "teacher", "teacher", tokens_per_s=900.0, tflops=250.0, mfu=0.25)
    _summary(out, "svd_seed0", tokens_per_s=1000.0, tflops=6.5, mfu=0.0066, **speed)
    _summary(out, "svd_seed1", tokens_per_s=1200.0, tflops=7.8, mfu=0.0079, **speed)
    _summary(out, "random_seed0", tokens_per_s=1290.0)  # a run from before MFU accounting
    doc = invoke_json("compare", run_dir)
    arms = {a["arm"]: a for a in doc["arms"]}
    svd, random = arms["svd"], arms["random"]
    assert svd["mfu"] == pytest.approx(0.00725) and svd["tflops"] == pytest.approx(7.15)
    assert svd["tokens_per_s"] == pytest.approx(1100.0) and svd["spread"]["mfu"]["n"] == 2
    assert svd["runs"][0]["peak_source"] == "NVIDIA H200"
    assert svd["runs"][1]["flops_per_token"] == 6.5e9
    assert random["tokens_per_s"] == 1290.0 and random["mfu"] is None and random["tflops"] is None
    assert random["runs"][1]["tokens_per_s"] is None  # random_seed1 has no record at all
    assert arms["teacher"]["mfu"] == 0.25
    report = Path(doc["artifacts"]["report"]).read_text()
    mfu = next(line for line in report.splitlines() if line.startswith("MFU"))
    assert mfu.split() == ["MFU", "-", "0.7%", "-", "25.0%"]


def test_svd_adapter_distance_is_eckart_young(llama_pair, tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    result = run_svd(str(llama_pair.base), str(llama_pair.tuned), cache, rank=2)
    doc = write_svd_outputs(
        result, tmp_path / "out", str(llama_pair.base), str(llama_pair.tuned), plot=False
    )
    geometry = adapter_geometry(
        str(llama_pair.base), str(llama_pair.tuned), {"svd": doc["artifacts"]["adapter"]}, cache
    )
    g = geometry["svd"]
    total_sq = sum(m.delta_norm**2 for m in result.modules)
    expected = math.sqrt(sum(m.rel_error**2 * m.delta_norm**2 for m in result.modules))
    assert g["distance"] == pytest.approx(expected, rel=1e-5)
    assert g["relative_distance"] == pytest.approx(
        math.sqrt(1 - result.summary["total_energy"]), rel=1e-5
    )
    assert g["teacher_norm"] == pytest.approx(math.sqrt(total_sq), rel=1e-6)
    assert g["overlap_left"] == pytest.approx(1.0) and g["overlap_right"] == pytest.approx(1.0)
    for kind, value in g["relative_distance_by_type"].items():
        rows = [m for m in result.modules if m.module_type == kind]
        num = sum(m.rel_error**2 * m.delta_norm**2 for m in rows)
        assert value == pytest.approx(math.sqrt(num / sum(m.delta_norm**2 for m in rows)), rel=1e-5)


def test_distance_without_forming_the_adapters_delta():
    """||dW - s B A||_F**2 through out x r and r x r products equals the dense difference,
    for a scaled adapter, one far from dW, one at dW's own top-r factors, and none."""
    import torch

    from svdlora_cli.adapters.factors import AdapterWeights
    from svdlora_cli.analysis.geometry import _distance_sq

    gen = torch.Generator().manual_seed(0)
    dw = torch.randn(40, 24, generator=gen, dtype=torch.float64)
    U, S, Vh = torch.linalg.svd(dw, full_matrices=False)
    cases = [
        AdapterWeights(
            B=torch.randn(40, 3, generator=gen), A=torch.randn(3, 24, generator=gen), scale=2.5
        ),
        AdapterWeights(B=(U[:, :4] * S[:4]).float(), A=Vh[:4].float(), scale=1.0),
    ]
    dw_sq = float((dw**2).sum())
    for w in cases:
        dense = float(((dw - w.scale * w.B.double() @ w.A.double()) ** 2).sum())
        assert _distance_sq(dw, dw_sq, w) == pytest.approx(dense, rel=1e-12, abs=1e-9)
    assert _distance_sq(dw, dw_sq, cases[1]) == pytest.approx(float((S[4:] ** 2).sum()), rel=1e-6)
    assert _distance_sq(dw, dw_sq, None) == dw_sq
