"""train-teacher -> svd -> train, end to end through the CLI on a tiny model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import assert_user_error, invoke, invoke_json

FAST = ["--epochs", "2", "--batch-size", "4", "--max-length", "64", "--device", "cpu"]


def _relative_distance(base: Path, teacher: Path, adapter: Path) -> float:
    """||dW - (alpha/r) B A||_F / ||dW||_F over the adapter's modules, from the files alone."""
    from safetensors.torch import load_file

    config = json.loads((adapter / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    lora = load_file(adapter / "adapter_model.safetensors")
    w0, w1 = load_file(Path(base) / "model.safetensors"), load_file(teacher / "model.safetensors")
    gap = total = 0.0
    for key, a in lora.items():
        if ".lora_A." not in key:
            continue
        module = key.removeprefix("base_model.model.").split(".lora_A.")[0]
        b = lora[key.replace(".lora_A.", ".lora_B.")]
        dw = w1[f"{module}.weight"].double() - w0[f"{module}.weight"].double()
        gap += float(((dw - scale * b.double() @ a.double()) ** 2).sum())
        total += float((dw**2).sum())
    return (gap / total) ** 0.5


def test_teacher_then_svd_then_students(tiny_llm, tiny_data, tmp_path):
    train, evaluation = (str(p) for p in tiny_data)
    teacher = invoke_json(
        "train-teacher",
        "--model-name",
        tiny_llm,
        "--data-path",
        train,
        "--eval-data",
        evaluation,
        "--learning-rate",
        "1e-2",
        "--output-dir",
        tmp_path / "teacher",
        *FAST,
    )
    arm = teacher["arms"][0]
    assert arm["final_loss"] < arm["initial_loss"]
    final = Path(arm["artifacts"]["final_model"])
    assert final == tmp_path / "teacher" / "final_model"
    workspace = (tmp_path / "svdlora.toml").read_text()
    assert str(final) in workspace and "base_model" in workspace

    svd = invoke_json(
        "svd", "--rank", "4", "-o", tmp_path / "svd_results"
    )  # models from svdlora.toml
    factors = svd["artifacts"]["factors"]

    students = invoke_json(
        "train",
        "--base-model",
        tiny_llm,
        "--train-data",
        train,
        "--init",
        "svd,random",
        "--svd-factors",
        factors,
        "--lora-rank",
        "4",
        "--learning-rate",
        "1e-3",
        "-o",
        tmp_path / "training_results",
        *FAST,
    )
    by_name = {a["name"]: a for a in students["arms"]}
    assert set(by_name) == {"svd", "random"}
    assert by_name["svd"]["initial_loss"] < by_name["random"]["initial_loss"]
    out = tmp_path / "training_results"
    for name in ("svd", "random"):
        assert (out / f"final_model_{name}" / "adapter_config.json").exists()
        with open(out / f"training_log_{name}.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert list(rows[0]) == [
            "step",
            "epoch",
            "loss",
            "lr",
            "grad_norm",
            "eval_loss",
            "tokens",
            "elapsed_s",
            "flops",
        ]
        assert rows[0]["step"] == "0" and len(rows) == 1 + 2 * 3
    orders = [json.loads((out / f"batch_order_{n}.json").read_text()) for n in ("svd", "random")]
    assert orders[0] == orders[1]

    # compare: figures from the logs, geometry from the adapters, accuracy from generation.
    doc = invoke_json(
        "compare",
        tmp_path,
        "--generate",
        "--eval-limit",
        "3",
        "--max-new-tokens",
        "8",
        "--eval-data",
        evaluation,
    )
    arms = {a["arm"]: a for a in doc["arms"]}
    assert set(arms) == {"teacher", "random", "svd"}
    assert arms["svd"]["energy_captured"] is not None and arms["random"]["energy_captured"] is None
    assert 0 <= arms["svd"]["overlap_right"] <= 1
    expected = _relative_distance(tiny_llm, final, out / "final_model_svd")
    assert arms["svd"]["relative_distance"] == pytest.approx(expected, rel=1e-4)
    assert set(doc["accuracy"]["models"]) == {"base", "teacher", "random", "svd"}
    assert all(m["total"] == 3 for m in doc["accuracy"]["models"].values())
    # --device picks where the answers are decoded (auto: here, the CPU, so the same
    # cached answers); a GPU that is not there is a user error before any decoding.
    again = ("compare", tmp_path, "--generate", "--eval-limit", "3", "--max-new-tokens", "8")
    on_cpu = invoke_json(*again, "--eval-data", evaluation, "--device", "cpu")
    assert on_cpu["accuracy"] == doc["accuracy"]
    if not torch.cuda.is_available():
        result = invoke(*again, "--eval-data", evaluation, "--device", "cuda")
        assert_user_error(result, "CUDA is not available", "--device cpu")

    # --teacher-model instead of --svd-factors goes through the cache: same start.
    via_teacher = invoke_json(
        "train",
        "-b",
        tiny_llm,
        "--train-data",
        train,
        "--init",
        "svd",
        "--teacher-model",
        final,
        "--lora-rank",
        "4",
        "--max-steps",
        "1",
        "-o",
        tmp_path / "via_teacher",
        *FAST,
    )
    assert via_teacher["arms"][0]["initial_loss"] == by_name["svd"]["initial_loss"]


def test_several_seeds_name_their_arms(tiny_llm, tiny_data, tmp_path):
    doc = invoke_json(
        "train",
        "-b",
        tiny_llm,
        "--train-data",
        tiny_data[0],
        "--init",
        "random",
        "--seeds",
        "0,1",
        "--max-steps",
        "1",
        "-o",
        tmp_path,
        *FAST,
    )
    assert [a["name"] for a in doc["arms"]] == ["random_seed0", "random_seed1"]
    assert (tmp_path / "training_log_random_seed1.csv").exists()


def test_training_input_errors(tiny_llm, tiny_data, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"question": "q", "answer": "a"}, {"question": "q2"}]')
    out = tmp_path / "out"
    assert_user_error(
        invoke("train", "-b", tiny_llm, "--train-data", bad, "-o", out, *FAST),
        "row 2: field 'answer' is missing",
    )
    assert_user_error(
        invoke("train-teacher", "-m", tiny_llm, "--data-path", bad, "-o", out, *FAST), "row 2"
    )
    assert_user_error(
        invoke(
            "train", "-b", tiny_llm, "--train-data", tiny_data[0], "--init", "svd", "-o", out, *FAST
        ),
        "--svd-factors",
    )
    assert_user_error(
        invoke("train", "-b", tiny_llm, "--init", "loftq", "-o", out), "unknown --init"
    )
    assert_user_error(invoke("train", "-b", tiny_llm, "--seeds", "0,x", "-o", out), "--seeds")
    assert_user_error(
        invoke(
            "train",
            "-b",
            tiny_llm,
            "--train-data",
            tiny_data[0],
            "--fp16",
            "-o",
            out,
            "--device",
            "cpu",
        ),
        "fp16",
    )
    assert not out.exists()
