"""train-teacher --save-steps: the teacher's early weights as model folders with markers,
svd of them, and students from them as svd@k arms beside svd."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from svdlora_cli.errors import InvalidOptionError, SvdloraError
from svdlora_cli.training.config import TrainConfig
from svdlora_cli.training.steplog import read_step_log
from svdlora_cli.training.teacher import train_teacher
from svdlora_cli.training.teacher_checkpoints import (
    MARKER,
    checkpoint_dir,
    checkpoint_label,
    init_label,
    teacher_checkpoint,
)
from tests.conftest import TINY_RUN, assert_user_error, invoke, invoke_json
from tests.launching import launch, needs_torchrun

# 12 rows in batches of 4 for 2 epochs: 6 steps. Padded batches, so FLOPs recount by hand.
TEACHER = TrainConfig(
    epochs=2, learning_rate=1e-2, batch_size=4, max_length=64, device="cpu", packing=False
)
STEPS = (1, 3)
STUDENT = ["--rank", "4", "--max-steps", "2", "--batch-size", "4", "--max-length", "64"]


@pytest.fixture(scope="module")
def teacher(tiny_llm, tiny_data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("teacher_ckpt")
    train, evaluation = (str(p) for p in tiny_data)
    return out, train_teacher(str(tiny_llm), out, TEACHER, train, evaluation, save_steps=STEPS)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


def _recounted_flops(tiny_llm: Path, train_file: str, order: list, steps: int) -> float:
    """The training FLOPs of the first `steps` steps, recounted from the batch order."""
    from svdlora_cli.data import collate, prepare_data
    from svdlora_cli.models.loading import load_model, load_tokenizer
    from svdlora_cli.training.flops import ModelFlops
    from svdlora_cli.training.loss import with_targets
    from svdlora_cli.training.packing import logit_count, row_lengths

    tokenizer = load_tokenizer(str(tiny_llm))
    data = prepare_data(tokenizer, train_file, None, TEACHER.max_length).train
    counter = ModelFlops.from_model(load_model(str(tiny_llm)))
    total = 0.0
    for micro_batches in order[:steps]:
        for indices in micro_batches:
            batch = with_targets(collate(indices, data, tokenizer.pad_token_id))
            total += counter.micro_batch(row_lengths(batch), logit_count(batch))
    return total


def test_checkpoints_hold_the_weights_and_figures_of_their_step(teacher, tiny_llm, tiny_data):
    out, summary = teacher
    rows = {r.step: r for r in read_step_log(out / "training_log_teacher.csv")}
    order = json.loads((out / "batch_order_teacher.json").read_text())["steps"]
    assert summary["steps"] == 6 and set(summary["checkpoints"]) == {"1", "3"}
    record = json.loads((out / "final_model" / "svdlora_run.json").read_text())
    markers = {}
    for step in (*STEPS, 6):
        folder = checkpoint_dir(out, step) if step != 6 else out / "final_model"
        assert {"config.json", "model.safetensors", "tokenizer.json", MARKER} <= {
            p.name for p in folder.iterdir()
        }
        marker = teacher_checkpoint(folder)
        assert marker is not None
        markers[step] = marker
        assert marker["step"] == step and marker["steps_total"] == 6
        assert marker["final"] is (step == 6)
        assert marker["tokens"] == rows[step].tokens > 0
        assert marker["flops"] == rows[step].flops
        assert marker["flops"] == pytest.approx(
            _recounted_flops(tiny_llm, str(tiny_data[0]), order, step), rel=1e-12
        )
        assert marker["base_model"] == str(tiny_llm)
        assert marker["run_key"] == record["run_key"]
        assert all(t.dtype == torch.float32 for t in _weights(folder).values())
    assert markers[1]["flops"] < markers[3]["flops"] < markers[6]["flops"]
    assert markers[6]["flops"] == summary["training_flops"]
    # Three distinct points of the run: the base, step 1, step 3 and the end all differ.
    name = "model.layers.0.self_attn.q_proj.weight"
    seen = [_weights(tiny_llm)[name].float()]
    seen += [_weights(checkpoint_dir(out, s))[name] for s in STEPS]
    seen += [_weights(out / "final_model")[name]]
    assert all(not torch.equal(a, b) for i, a in enumerate(seen) for b in seen[i + 1 :])
    assert teacher_checkpoint(tiny_llm) is None  # a plain model folder has no marker


def test_saving_checkpoints_leaves_the_final_weights_unchanged(
    teacher, tiny_llm, tiny_data, tmp_path
):
    out, summary = teacher
    plain = train_teacher(str(tiny_llm), tmp_path, TEACHER, *(str(p) for p in tiny_data))
    with_steps, without = _weights(out / "final_model"), _weights(tmp_path / "final_model")
    assert with_steps.keys() == without.keys()
    assert all(torch.equal(with_steps[k], without[k]) for k in with_steps)
    assert plain["final_loss"] == summary["final_loss"]
    assert not (tmp_path / "checkpoints").exists()


def test_a_step_past_the_run_is_refused_before_training(tiny_llm, tiny_data, tmp_path):
    with pytest.raises(InvalidOptionError) as caught:
        train_teacher(str(tiny_llm), tmp_path, TEACHER, str(tiny_data[0]), save_steps=(3, 7))
    assert "7" in caught.value.message and "the run has 6 steps" in caught.value.hint
    assert not (tmp_path / "final_model").exists()


def test_a_reused_run_without_its_checkpoints_trains_again(tiny_llm, tiny_data, tmp_path):
    config = TrainConfig(**{**TEACHER.to_dict(), "max_steps": 3})
    memo: dict = {}

    def run(steps):
        return train_teacher(
            str(tiny_llm),
            tmp_path,
            config,
            str(tiny_data[0]),
            reuse=True,
            memo=memo,
            save_steps=steps,
        )

    first = run((1,))
    assert "reused" not in first
    assert run((1,))["reused"] is True  # every requested checkpoint is there
    final = _weights(tmp_path / "final_model")
    again = run((1, 2))  # step 2 was never saved: trained again, not silently skipped
    assert "reused" not in again and set(again["checkpoints"]) == {"1", "2"}
    assert teacher_checkpoint(checkpoint_dir(tmp_path, 2))["step"] == 2
    assert all(torch.equal(final[k], v) for k, v in _weights(tmp_path / "final_model").items())
    (checkpoint_dir(tmp_path, 1) / MARKER).unlink()  # no marker: not this run's checkpoint
    assert "reused" not in run((1,))
    assert teacher_checkpoint(checkpoint_dir(tmp_path, 1))["step"] == 1


def test_another_run_into_the_folder_drops_the_old_checkpoints(tiny_llm, tiny_data, tmp_path):
    config = TrainConfig(**{**TEACHER.to_dict(), "max_steps": 2})
    train_teacher(str(tiny_llm), tmp_path, config, str(tiny_data[0]), save_steps=(1,))
    other = TrainConfig(**{**config.to_dict(), "learning_rate": 1e-3})
    train_teacher(str(tiny_llm), tmp_path, other, str(tiny_data[0]), save_steps=(2,))
    assert not checkpoint_dir(tmp_path, 1).exists()  # it led to the old final_model
    key = json.loads((tmp_path / "final_model" / "svdlora_run.json").read_text())["run_key"]
    assert teacher_checkpoint(checkpoint_dir(tmp_path, 2))["run_key"] == key


def test_a_resumed_run_must_find_the_checkpoints_before_its_step(tiny_llm, tiny_data, tmp_path):
    state = tmp_path / "checkpoints" / "teacher"
    state.mkdir(parents=True)
    (state / "state.json").write_text(json.dumps({"step": 3}))
    config = TrainConfig(**{**TEACHER.to_dict(), "resume": True})
    with pytest.raises(InvalidOptionError, match="resumes after step 3"):
        train_teacher(str(tiny_llm), tmp_path, config, str(tiny_data[0]), save_steps=(2, 5))


def test_a_damaged_marker_is_an_error(tmp_path):
    (tmp_path / MARKER).write_text(json.dumps({"step": 9, "final": False}))
    with pytest.raises(SvdloraError, match="not a valid svdlora checkpoint marker"):
        teacher_checkpoint(tmp_path)


def test_svd_of_a_checkpoint_is_the_svd_of_its_delta(teacher, tiny_llm, tmp_path):
    from svdlora_cli.adapters.factors import load_factors

    step_dir = checkpoint_dir(teacher[0], 3)
    doc = invoke_json("svd", "-b", tiny_llm, "-t", step_dir, "--rank", "4", "-o", tmp_path)
    factors = load_factors(doc["artifacts"]["factors"])
    base, tuned = _weights(tiny_llm), _weights(step_dir)
    assert factors
    for module, f in factors.items():
        dw = tuned[f"{module}.weight"].double() - base[f"{module}.weight"].double()
        u, s, vh = torch.linalg.svd(dw, full_matrices=False)
        best = (u[:, :4] * s[:4]) @ vh[:4]
        product = f.B.double() @ f.A.double()
        assert torch.linalg.norm(product - best) <= 1e-4 * torch.linalg.norm(best), module


def test_students_from_a_checkpoint_are_svd_at_k_beside_svd(teacher, tiny_llm, tiny_data, tmp_path):
    out, _ = teacher
    train, evaluation = (str(p) for p in tiny_data)
    data = ["--train-data", train, "--eval-data", evaluation, "--device", "cpu", *STUDENT]
    runs = tmp_path / "runs"
    early = invoke_json(
        "train",
        "-b",
        tiny_llm,
        "--init",
        "svd,subspace,random",
        "--teacher-model",
        checkpoint_dir(out, 1),
        "--learning-rates",
        "1e-3,2e-3",
        "-o",
        runs,
        *data,
    )
    by_name = {a["name"]: a for a in early["arms"]}
    assert set(by_name) == {
        f"{arm}_lr{lr}" for arm in ("svd@1", "subspace@1", "random") for lr in ("0.001", "0.002")
    }
    arm = by_name["svd@1_lr0.001"]
    assert arm["init"] == "svd" and arm["init_label"] == "svd@1"
    assert (arm["teacher_step"], arm["teacher_steps_total"]) == (1, 6)
    marker = teacher_checkpoint(checkpoint_dir(out, 1))
    assert (arm["teacher_tokens"], arm["teacher_flops"]) == (marker["tokens"], marker["flops"])
    assert by_name["random_lr0.001"]["init_label"] == "random"
    assert by_name["random_lr0.001"]["teacher_step"] is None
    record = json.loads((runs / "final_model_svd@1_lr0.001" / "svdlora_run.json").read_text())
    assert record["init"] == "svd" and init_label(record) == "svd@1"
    assert (record["teacher_step"], record["teacher_flops"]) == (1, marker["flops"])
    # From the final teacher into the same folder: plain svd, its own run, svd@1 kept.
    final = invoke_json(
        "train",
        "-b",
        tiny_llm,
        "--init",
        "svd",
        "--teacher-model",
        out / "final_model",
        "--learning-rates",
        "1e-3,2e-3",
        "-o",
        runs,
        "--resume",
        *data,
    )
    assert [a["name"] for a in final["arms"]] == ["svd_lr0.001", "svd_lr0.002"]
    assert not any(a.get("reused") for a in final["arms"])  # svd@1's runs are not svd's
    assert final["arms"][0]["init_label"] == "svd" and final["arms"][0]["teacher_step"] == 6
    plain = json.loads((runs / "final_model_svd_lr0.001" / "svdlora_run.json").read_text())
    assert plain["run_key"] != record["run_key"] and init_label(plain) == "svd"
    assert (runs / "final_model_svd@1_lr0.001").is_dir()
    assert (runs / "training_log_svd@1_lr0.001.csv").is_file()
    # Factors of the checkpoint label their arm too (they record the folder they came from).
    svd_doc = invoke_json(
        "svd", "-b", tiny_llm, "-t", checkpoint_dir(out, 1), "-r", "4", "-o", tmp_path / "svd1"
    )
    via_factors = invoke_json(
        "train",
        "-b",
        tiny_llm,
        "--init",
        "svd",
        "--svd-factors",
        svd_doc["artifacts"]["factors"],
        "-o",
        tmp_path / "via_factors",
        *data,
    )
    assert via_factors["arms"][0]["name"] == "svd@1"
    assert via_factors["arms"][0]["initial_loss"] == pytest.approx(
        by_name["svd@1_lr0.001"]["initial_loss"], rel=1e-6
    )


def test_the_run_key_holds_the_teacher_checkpoint(teacher, tiny_llm, tiny_data, tmp_path):
    """Same factors, another teacher checkpoint behind them: not the same run."""
    from svdlora_cli.store.cache import ArtifactCache
    from svdlora_cli.training.student import base_plan, svd_factors_for, train_student

    cache = ArtifactCache(tmp_path / "cache")
    step_dir = checkpoint_dir(teacher[0], 1)
    factors = svd_factors_for(str(tiny_llm), 4, cache, teacher_model=str(step_dir))
    plan = base_plan(str(tiny_llm), 4, None, factors=factors)
    config = TrainConfig(max_steps=1, batch_size=4, max_length=64, device="cpu")
    memo: dict = {}

    def run(marker):
        return train_student(
            str(tiny_llm),
            "svd",
            tmp_path,
            config,
            plan,
            factors,
            "arm",
            str(tiny_data[0]),
            reuse=True,
            memo=memo,
            teacher=marker,
        )

    assert "reused" not in run(None)
    assert run(None)["reused"] is True
    assert "reused" not in run(teacher_checkpoint(step_dir))


def test_labels_name_the_checkpoint_only_for_teacher_reading_inits():
    early = {"step": 5, "final": False}
    assert checkpoint_label("svd", early) == "svd@5"
    assert checkpoint_label("svd-sqrt", early) == "svd-sqrt@5"
    assert checkpoint_label("random", early) == "random"
    assert checkpoint_label("svd", {"step": 6, "final": True}) == "svd"
    assert checkpoint_label("svd", None) == "svd"
    assert init_label({"init": "svd"}) == "svd"
    assert init_label({"init": "svd", "init_label": "svd@5"}) == "svd@5"


def test_the_cli_refuses_a_step_past_the_run(tiny_llm, tiny_data, tmp_path):
    result = invoke(
        "train-teacher",
        "-b",
        tiny_llm,
        "--train-data",
        tiny_data[0],
        "--save-steps",
        "2,40",
        "--epochs",
        "2",
        *TINY_RUN,
        "-o",
        tmp_path / "t",
        "--no-workspace",
    )
    assert_user_error(result, "--save-steps 40", "the run has 6 steps")
    assert_user_error(
        invoke("train-teacher", "-b", tiny_llm, "--save-steps", "0,x"), "--save-steps"
    )


@needs_torchrun
def test_two_processes_keep_the_same_checkpoints_as_one(tiny_llm, tiny_data, tmp_path):
    """Under DDP every rank takes part in the save; rank 0 writes the folder once, with the
    FLOPs and tokens of both ranks."""
    args = ["train-teacher", "-b", str(tiny_llm), "--train-data", str(tiny_data[0])]
    args += ["--epochs", "1", *TINY_RUN]
    args += ["--learning-rate", "1e-3", "--save-steps", "2", "--no-workspace", "--json"]
    markers, weights = [], []
    for processes in (1, 2):
        out = tmp_path / str(processes)
        done = launch([*args, "-o", str(out)], processes)
        assert done.returncode == 0, done.stderr[-3000:]
        markers.append(teacher_checkpoint(checkpoint_dir(out, 2)))
        weights.append(_weights(checkpoint_dir(out, 2)))
        assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_2"]
        row = read_step_log(out / "training_log_teacher.csv")[2]
        assert (markers[-1]["tokens"], markers[-1]["flops"]) == (row.tokens, row.flops)
    single, multi = markers
    assert (multi["step"], multi["tokens"]) == (single["step"], single["tokens"])
    assert max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0]) < 1e-5
