"""train-teacher under torchrun (2 CPU processes, gloo) against a single process."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from svdlora_cli.errors import InvalidOptionError
from svdlora_cli.training.config import TrainConfig
from svdlora_cli.training.loop import fit
from tests.launching import launch, needs_torchrun

ROOT = Path(__file__).resolve().parents[2]
ARGS = [
    "train-teacher",
    "--data-path",
    "{data}",
    "--epochs",
    "2",
    "--batch-size",
    "11",  # 12 rows: the second micro-batch has 1 row, so rank 1 runs a stand-in
    "--max-length",
    "64",
    "--device",
    "cpu",
    "--learning-rate",
    "1e-3",
    "--no-workspace",
    "--json",
]


def _log(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def _run(args: list[str], out: Path, processes: int) -> dict:
    """One JSON document from `svdlora ARGS -o OUT`, in one process or under torchrun."""
    done = launch([*args, "-o", str(out)], processes)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(done.stdout.strip().splitlines()) == 1  # only rank 0 prints
    return json.loads(done.stdout)


@needs_torchrun
def test_two_processes_match_one(tiny_llm, tiny_data, tmp_path):
    args = [a.format(data=tiny_data[0]) for a in ARGS] + ["-m", str(tiny_llm)]
    single = _run(args, tmp_path / "single", 1)
    multi = _run(args, tmp_path / "multi", 2)
    assert multi["arms"][0]["steps"] == single["arms"][0]["steps"]
    out = tmp_path / "multi"
    assert sorted(p.name for p in out.iterdir()) == [
        "batch_order_teacher.json",
        "final_model",
        "run_config.json",
        "training_log_teacher.csv",
    ]
    logs = [_log(tmp_path / d / "training_log_teacher.csv") for d in ("single", "multi")]
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]  # mean over both ranks
    assert [r["tokens"] for r in logs[0]] == [r["tokens"] for r in logs[1]]
    a = load_file(tmp_path / "single" / "final_model" / "model.safetensors")
    b = load_file(out / "final_model" / "model.safetensors")
    # The all-reduce sums gradients in another order than one process does; AdamW
    # rescales that rounding, so the weights agree to about 1e-6 at this learning rate.
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


@needs_torchrun
def test_svd_student_two_processes_match_one(tiny_llm, tiny_data, tmp_path):
    """The teacher's SVD is split across the ranks, then accelerate trains on the same group."""
    teacher_args = [a.format(data=tiny_data[0]) for a in ARGS] + ["-m", str(tiny_llm)]
    _run(teacher_args, tmp_path / "teacher", 1)
    args = ["train", "-b", str(tiny_llm), "-t", str(tmp_path / "teacher" / "final_model")]
    args += ["--init", "svd", "-r", "4", "--data-path", str(tiny_data[0]), "--epochs", "1"]
    args += ["--batch-size", "4", "--max-length", "64", "--device", "cpu", "--json"]
    single = _run([*args, "--cache-dir", str(tmp_path / "c1")], tmp_path / "single", 1)
    multi = _run([*args, "--cache-dir", str(tmp_path / "c2")], tmp_path / "multi", 2)
    one, two = single["arms"][0], multi["arms"][0]
    # Each rank runs half of every batch (other shapes, other rounding); the SVD init itself
    # is byte-identical (tests/test_distributed.py).
    assert abs(two["initial_loss"] - one["initial_loss"]) < 1e-5
    assert two["steps"] == one["steps"] and two["tokens"] == one["tokens"]
    assert abs(two["final_loss"] - one["final_loss"]) < 1e-5


@needs_torchrun
def test_checkpoints_resume_under_ddp_and_fsdp(tiny_llm, tiny_data, tmp_path):
    """resume_launch.py: --save-every/--resume under 2 DDP processes, and the checkpoint
    format on an FSDP2-sharded model (full tensors gathered, restored into shards)."""
    inputs = [str(tiny_llm), str(tiny_data[0]), str(tmp_path / "runs")]
    env = {"SVDLORA_TEST_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    script = Path(__file__).with_name("resume_launch.py")
    done = launch(inputs, 2, script=script, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)
    assert doc["checkpointed"] and doc["world_size"] == 2 and doc["engine"] == "MULTI_CPU"
    assert doc["teacher_gap"] < 1e-6
    assert doc["student_gap"] < 1e-6
    assert doc["fsdp_gap"] < 1e-6


def test_deepspeed_checkpoints_are_refused_before_training():
    class DeepSpeedAccelerator:
        distributed_type = "DistributedType.DEEPSPEED"

    config = TrainConfig(epochs=1, batch_size=4, device="cpu", save_every=2)
    with pytest.raises(InvalidOptionError, match="DeepSpeed") as error:
        fit(None, None, None, config, 0, DeepSpeedAccelerator())
    assert "FSDP" in error.value.hint
