"""--save-every / --resume: an interrupted run, resumed, ends with the uninterrupted weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from svdlora_cli.errors import SvdloraError
from svdlora_cli.store.cache import ArtifactCache
from svdlora_cli.training.config import TrainConfig
from svdlora_cli.training.steplog import read_step_log
from svdlora_cli.training.student import base_plan, svd_factors_for, train_student
from svdlora_cli.training.teacher import train_teacher
from tests.conftest import invoke_json

CONFIG = TrainConfig(
    epochs=2, learning_rate=3e-3, batch_size=4, max_length=64, device="cpu", save_every=2
)


def _interrupt_at(step: int):
    def progress(number: int, total: int, loss: float) -> None:
        if number == step:
            raise KeyboardInterrupt

    return progress


def test_teacher_resume_matches_uninterrupted(tiny_llm, tiny_data, tmp_path):
    data = str(tiny_data[0])
    train_teacher(str(tiny_llm), tmp_path / "full", CONFIG, data)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(str(tiny_llm), tmp_path / "cut", CONFIG, data, progress=_interrupt_at(5))
    assert (tmp_path / "cut" / "checkpoints" / "teacher" / "state.json").exists()
    resumed = TrainConfig(**{**CONFIG.to_dict(), "resume": True})
    train_teacher(str(tiny_llm), tmp_path / "cut", resumed, data)
    full = load_file(tmp_path / "full" / "final_model" / "model.safetensors")
    cut = load_file(tmp_path / "cut" / "final_model" / "model.safetensors")
    assert full.keys() == cut.keys()
    for name in full:
        assert torch.allclose(full[name], cut[name], atol=1e-6), name
    a = read_step_log(tmp_path / "full" / "training_log_teacher.csv")
    b = read_step_log(tmp_path / "cut" / "training_log_teacher.csv")
    assert [r.loss for r in a] == pytest.approx([r.loss for r in b], abs=1e-6)
    assert [r.tokens for r in a] == [r.tokens for r in b]
    assert not (tmp_path / "cut" / "checkpoints" / "teacher").exists()  # removed when done


def test_student_resume_matches_and_refuses_other_settings(tiny_llm, tiny_data, tmp_path):
    data = str(tiny_data[0])
    teacher = tmp_path / "teacher"
    train_teacher(
        str(tiny_llm), teacher, TrainConfig(**{**CONFIG.to_dict(), "save_every": 0}), data
    )
    factors = svd_factors_for(
        str(tiny_llm), 4, ArtifactCache(None), teacher_model=str(teacher / "final_model")
    )
    plan = base_plan(str(tiny_llm), 4, None, factors=factors)
    full = train_student(
        str(tiny_llm), "svd", tmp_path / "full", CONFIG, plan, factors, data_path=data
    )
    with pytest.raises(KeyboardInterrupt):
        train_student(
            str(tiny_llm),
            "svd",
            tmp_path / "cut",
            CONFIG,
            plan,
            factors,
            data_path=data,
            progress=_interrupt_at(3),
        )
    other = TrainConfig(**{**CONFIG.to_dict(), "resume": True, "learning_rate": 1e-2})
    with pytest.raises(SvdloraError, match="other inputs or settings"):
        train_student(str(tiny_llm), "svd", tmp_path / "cut", other, plan, factors, data_path=data)
    resumed = TrainConfig(**{**CONFIG.to_dict(), "resume": True})
    cut = train_student(
        str(tiny_llm), "svd", tmp_path / "cut", resumed, plan, factors, data_path=data
    )
    a = load_file(tmp_path / "full" / "final_model_svd" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "final_model_svd" / "adapter_model.safetensors")
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    assert cut["final_loss"] == pytest.approx(full["final_loss"], abs=1e-6)


def test_cli_flags_reach_the_loop(tiny_llm, tiny_data, tmp_path):
    doc = invoke_json(
        "train",
        "-b",
        tiny_llm,
        "--train-data",
        tiny_data[0],
        "--max-steps",
        "3",
        "--save-every",
        "1",
        "--resume",
        "--device",
        "cpu",
        "--max-length",
        "64",
        "-o",
        tmp_path,
    )
    assert doc["config"]["save_every"] == 1 and doc["config"]["resume"] is True
    assert not (tmp_path / "checkpoints" / "random").exists()
