"""`train` runs stay apart: one process per output folder, run names that never collide,
a --resume that refuses other settings by name, and a Ctrl-C that prints the command that
resumes.

Run as a script (`python test_train_runs.py train ...`), this file is `svdlora` with its
optimizer steps counted into $SVDLORA_TEST_STEPS, and held at step $SVDLORA_TEST_HOLD_AT
while the file $SVDLORA_TEST_HOLD exists: the tests start real processes with it, stop
them at a known step and interrupt them there.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from svdlora_cli.errors import InvalidOptionError
from svdlora_cli.output_sets import lock_holder
from svdlora_cli.training.config import TrainConfig
from svdlora_cli.training.steplog import read_step_log
from svdlora_cli.workflows.train import TrainOptions, learning_rate_text
from tests.conftest import assert_user_error, build_tiny_llm, invoke, write_rows
from tests.reliability.conftest import COUNTS

ROOT = Path(__file__).resolve().parents[2]
# 12 rows, 4 a step: 3 steps an epoch, so 6 steps span two epochs.
FAST = ["--batch-size", "4", "--max-length", "64", "--device", "cpu", "--learning-rate", "3e-3"]


def count_steps(on_step: Callable[[], None], patch: Callable[..., None] = setattr) -> None:
    """Call `on_step()` after every training step of every run of this process."""
    from svdlora_cli.training import loop

    original = loop.make_optimizer

    def counting(params, config, device):
        optimizer = original(params, config, device)
        step = optimizer.step

        def counted(self, *args, **kwargs):
            result = step(*args, **kwargs)
            if any(group["lr"] != 0 for group in self.param_groups):
                on_step()  # not the lr-0 step that sets up the state a checkpoint loads into
            return result

        optimizer.step = types.MethodType(counted, optimizer)  # the LR scheduler wraps it
        return optimizer

    patch(loop, "make_optimizer", counting)


class Steps:
    """The optimizer steps this process takes, counted; a Ctrl-C lands right after step
    number `stop_at` of the count (None: never)."""

    def __init__(self, monkeypatch, stop_at: int | None = None) -> None:
        self.count, self.stop_at = 0, stop_at
        count_steps(self._step, monkeypatch.setattr)

    def _step(self) -> None:
        self.count += 1
        if self.count == self.stop_at:
            raise KeyboardInterrupt

    def restart(self, stop_at: int | None = None) -> None:
        self.count, self.stop_at = 0, stop_at


def _script(*args: object, steps: Path, hold: Path | None = None, hold_at: int = 0):
    """This file as `svdlora ARGS` in a new process, counting steps (and held, if asked)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SVDLORA_NO_PROGRESS": "1",
        "OMP_NUM_THREADS": "1",
        "SVDLORA_TEST_STEPS": str(steps),
        "SVDLORA_TEST_HOLD": str(hold or ""),
        "SVDLORA_TEST_HOLD_AT": str(hold_at),
    }
    # A test runner started in the background inherits an ignored SIGINT; restore the
    # default in the child so it behaves as it does in a terminal.
    return subprocess.Popen(
        [sys.executable, __file__, *map(str, args)],
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _steps_done(steps: Path) -> int:
    return len(steps.read_text().split()) if steps.exists() else 0


def _wait_for(proc: subprocess.Popen, steps: Path, n: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while _steps_done(steps) < n:
        if proc.poll() is not None:
            raise AssertionError(f"the process ended early:\n{proc.communicate()[1]}")
        assert time.monotonic() < deadline, "the process never reached its step"
        time.sleep(0.05)


def _resume_command(stderr: str) -> list[str]:
    """The command the Ctrl-C message prints (its one line that starts with `svdlora `)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip().startswith("svdlora ")]
    assert len(lines) == 1, stderr
    return shlex.split(lines[0])


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# -- 1. one `train` per output folder -------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "train-teacher"])
def test_a_train_into_a_folder_another_process_holds_is_refused(
    command, tiny_llm, tiny_data, tmp_path
):
    """The lock `svd` takes: refused with the folder and the holder's pid, nothing written."""
    out = tmp_path / "runs"
    out.mkdir()
    (out / "training_log_random.csv").write_text("the other run's log\n")
    before = _files(out)
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)  # what a running `train` holds
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder = lock_holder(out)
        result = invoke(command, "-b", tiny_llm, "--train-data", tiny_data[0], "-o", out, *FAST)
    finally:
        os.close(fd)
    who = f"process {os.getpid()}" if holder is not None else "another svdlora process"
    assert holder in (None, os.getpid())
    assert_user_error(result, f"output folder {out} is busy: {who}", "--output-dir")
    assert _files(out) == before  # nothing overwritten, nothing added
    COUNTS["faults handled"] += 1


def test_two_train_processes_into_one_folder_the_second_is_refused(tiny_llm, tiny_data, tmp_path):
    out, steps, hold = tmp_path / "runs", tmp_path / "steps", tmp_path / "hold"
    hold.touch()
    first = _script(
        "train", "-b", tiny_llm, "--train-data", tiny_data[0], "-o", out, "--max-steps", "3",
        *FAST, steps=steps, hold=hold, hold_at=1,
    )  # fmt: skip
    try:
        _wait_for(first, steps, 1)  # training (so holding the folder), held at step 1
        second = subprocess.run(
            [
                sys.executable, "-m", "svdlora_cli", "train", "-b", str(tiny_llm),
                "--train-data", str(tiny_data[0]), "-o", str(out), "--max-steps", "3",
                *FAST, "--learning-rate", "1e-2",
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT), "SVDLORA_NO_PROGRESS": "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )  # fmt: skip
    finally:
        hold.unlink()
    _, first_err = first.communicate(timeout=300)
    assert second.returncode == 1, second.stderr
    holder = f"process {first.pid}" if os.access("/proc/locks", os.R_OK) else "another"
    assert f"Error: output folder {out} is busy: {holder}" in second.stderr
    assert "Hint: " in second.stderr and "Traceback" not in second.stderr
    assert first.returncode == 0, first_err
    record = json.loads((out / "final_model_random" / "svdlora_run.json").read_text())
    assert record["learning_rate"] == 3e-3  # the first run's, not the refused one's
    COUNTS["faults handled"] += 1


# -- 2. run names -----------------------------------------------------------------------------


def test_learning_rates_keep_their_usual_names_and_never_share_one():
    for lr, text in [(1e-4, "0.0001"), (3e-4, "0.0003"), (2e-4, "0.0002"), (1e-3, "0.001")]:
        assert learning_rate_text(lr) == text
    assert learning_rate_text(3e-5) == "3e-05" == f"{3e-5:g}"
    assert learning_rate_text(1.0000001e-4) == "0.00010000001"  # %g said 0.0001
    options = TrainOptions("m", TrainConfig(), learning_rates=(1e-4, 1.0000001e-4))
    names = {options.run_name("svd", lr, 0) for lr in options.grid}
    assert names == {"svd_lr0.0001", "svd_lr0.00010000001"}
    for lr in (1e-4, 1.0000001e-4, 3.3333333333e-4, 1e-7 + 1e-20, 5e-3):
        assert float(learning_rate_text(lr)) == lr  # the name reads back as the rate


def test_rates_that_print_alike_train_into_two_folders(tiny_llm, tiny_data, tmp_path):
    out = tmp_path / "runs"
    result = invoke(
        "train", "-b", tiny_llm, "--train-data", tiny_data[0], "-o", out, *FAST[:-2],
        "--max-steps", "1", "--learning-rates", "1e-4,1.0000001e-4", "--json",
        "--eval-data", tiny_data[1],  # a grid needs eval rows; no --learning-rate beside it
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    names = {a["name"]: a["learning_rate"] for a in json.loads(result.stdout)["arms"]}
    assert names == {"random_lr0.0001": 1e-4, "random_lr0.00010000001": 1.0000001e-4}
    for name, lr in names.items():
        record = json.loads((out / f"final_model_{name}" / "svdlora_run.json").read_text())
        assert record["learning_rate"] == lr
    COUNTS["faults handled"] += 1


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (
            {"inits": ("random", "random")},
            ["'random'", "--init random --learning-rate 0.0002 --seed 0 and --init random"],
        ),
        ({"learning_rates": (1e-4, 1e-4)}, ["'svd_lr0.0001'"]),
        ({"seeds": (3, 3)}, ["'svd_seed3'"]),
    ],
)
def test_a_grid_that_names_two_runs_alike_is_refused_before_training(options, fragments):
    base = {"inits": ("svd",)} | options
    with pytest.raises(InvalidOptionError, match="would both be named") as caught:
        TrainOptions("m", TrainConfig(), **base).validate()
    for fragment in fragments:
        assert fragment in caught.value.message
    assert "once" in caught.value.hint
    COUNTS["faults handled"] += 1


def test_the_cli_refuses_a_repeated_init_and_writes_nothing(tiny_llm, tiny_data, tmp_path):
    out = tmp_path / "runs"
    result = invoke(
        "train", "-b", tiny_llm, "--train-data", tiny_data[0], "-o", out, *FAST,
        "--init", "random,random",
    )  # fmt: skip
    assert_user_error(result, "two runs of the grid would both be named 'random'")
    assert not out.exists()
    COUNTS["faults handled"] += 1


# -- 3. --resume refuses other settings, by name ----------------------------------------------


def test_resume_refuses_each_changed_setting_by_name_then_resumes(
    tiny_llm, tiny_data, tmp_path, monkeypatch
):
    out = tmp_path / "runs"
    other_rows = write_rows(tmp_path / "other.json", 12, offset=100)  # as many rows, new text
    other_base = build_tiny_llm(tmp_path / "other-base", seed=1)  # same shapes, new weights
    common = ["--max-steps", "6", "--save-every", "2", "--rank", "4", *FAST]

    def train(*extra: object):
        return invoke("train", "-b", tiny_llm, "--train-data", tiny_data[0], "-o", out,
                      *common, *extra)  # fmt: skip

    steps = Steps(monkeypatch, stop_at=3)
    cut = train()
    assert cut.exit_code == 130, cut.output
    checkpoint = out / "checkpoints" / "random"
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 2
    planted = [
        (["--rank", "8"], "--rank 4 -> 8"),
        (["--lora-alpha", "16"], "--lora-alpha 4"),
        (["--lora-dropout", "0.1"], "--lora-dropout 0.0 -> 0.1"),
        (["--target-modules", "q_proj"], "--include 14 modules"),
        (["--batch-size", "2"], "--batch-size 4 -> 2"),
        (["--tokens-per-step", "300"], "--tokens-per-step None -> 300"),
        (["--seeds", "1"], "--seed / --seeds 0 -> 1"),
        (["--learning-rate", "1e-2"], "--learning-rate 0.003 -> 0.01"),
        (["--max-length", "48"], "--max-length 64 -> 48"),
        (["--train-data", other_rows], "the training rows (--train-data"),
        (["--eval-data", tiny_data[1]], "the eval rows (--eval-data"),
        (["-b", other_base], f"--base-model {tiny_llm} -> {other_base}"),
    ]
    for change, named in planted:
        refused = train(*change, "--resume")
        assert_user_error(refused, "belongs to a run with other inputs or settings", named)
        assert "resume it at step 2" in refused.stderr
        COUNTS["faults handled"] += 1
    rank = train("--rank", "8", "--resume")
    assert "--lora-alpha 4.0 -> 8.0" in rank.stderr  # alpha follows the rank by default
    assert "trainable tensors" not in rank.stderr  # shown only when nothing named explains it

    steps.restart()
    resumed = train("--resume")
    assert resumed.exit_code == 0, resumed.output
    assert steps.count == 4  # steps 3 to 6: it went on from the checkpoint at step 2
    assert not checkpoint.exists()

    steps.restart(stop_at=3)
    cut = train()  # interrupted at step 3 again: a checkpoint at step 2
    assert cut.exit_code == 130
    steps.restart()
    fresh = train()  # without --resume: starts over, and says what it replaces
    assert fresh.exit_code == 0, fresh.output
    assert f"Warning: {checkpoint} holds the checkpoint of an interrupted run at step 2" in (
        fresh.stderr
    )
    assert "add --resume to continue from it" in fresh.stderr
    COUNTS["faults handled"] += 1


# -- 4. Ctrl-C prints the command that resumes ------------------------------------------------


def test_ctrl_c_without_checkpoints_says_so_and_how_to_keep_them(
    tiny_llm, tiny_data, tmp_path, monkeypatch
):
    steps = Steps(monkeypatch, stop_at=2)
    args = ["train", "-b", str(tiny_llm), "--train-data", str(tiny_data[0]), "-o",
            str(tmp_path / "runs"), "--max-steps", "4", *FAST]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert "Interrupted. No checkpoint of the interrupted run was saved (add --save-every N" in (
        result.stderr
    )
    assert "starts again at step 0; runs that finished are kept" in result.stderr
    assert _resume_command(result.stderr) == ["svdlora", *args, "--resume"]
    steps.restart(stop_at=2)
    again = invoke(*args, "--resume")  # --resume already there: not added twice
    assert again.exit_code == 130
    assert _resume_command(again.stderr) == ["svdlora", *args, "--resume"]
    COUNTS["faults handled"] += 1


def test_ctrl_c_in_a_grid_then_the_printed_command_keeps_finished_runs_and_resumes(
    tiny_llm, tiny_data, tmp_path, monkeypatch
):
    out = tmp_path / "grid"
    steps = Steps(monkeypatch, stop_at=7)  # the second run's step 3, after its checkpoint at 2
    result = invoke(
        "train", "-b", tiny_llm, "--train-data", tiny_data[0], "-o", out, *FAST[:-2],
        "--max-steps", "4", "--save-every", "2", "--learning-rates", "1e-3,3e-3",
        "--eval-data", tiny_data[1],  # a grid needs eval rows; no --learning-rate beside it
    )  # fmt: skip
    assert result.exit_code == 130, result.output
    assert "Interrupted. The checkpoint at step 2 is kept. To resume from it, run:" in (
        result.stderr
    )
    command = _resume_command(result.stderr)
    assert command[-1] == "--resume" and command[0] == "svdlora"
    steps.restart()
    resumed = invoke(*command[1:], "--json")
    assert resumed.exit_code == 0, resumed.output
    arms = {a["name"]: a for a in json.loads(resumed.stdout)["arms"]}
    assert arms["random_lr0.001"].get("reused") is True  # finished before the Ctrl-C
    assert not arms["random_lr0.003"].get("reused")
    assert steps.count == 2  # only steps 3 and 4 of the interrupted run
    COUNTS["faults handled"] += 1


def test_sigint_then_the_printed_command_resumes_at_the_saved_step(tiny_llm, tiny_data, tmp_path):
    """A real Ctrl-C (SIGINT) in a real process; the command it prints, run as printed,
    goes on from the checkpoint and ends with the weights of an uninterrupted run."""
    args = ["train", "-b", tiny_llm, "--train-data", tiny_data[0], "--max-steps", "8",
            "--save-every", "2", *FAST]  # fmt: skip
    # The reference runs as a script too: one BLAS thread in every run, so equal weights.
    reference = _script(*args, "-o", tmp_path / "reference", steps=tmp_path / "ref-steps")
    out, steps, hold = tmp_path / "runs", tmp_path / "steps", tmp_path / "hold"
    hold.touch()
    proc = _script(*args, "-o", out, steps=steps, hold=hold, hold_at=5)
    try:
        _wait_for(proc, steps, 5)  # held after step 5: the checkpoint of step 4 is on disk
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        hold.unlink(missing_ok=True)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    saved = json.loads((out / "checkpoints" / "random" / "state.json").read_text())["step"]
    assert saved == 4
    assert f"The checkpoint at step {saved} is kept" in stderr
    command = _resume_command(stderr)
    assert command[-1] == "--resume"
    rerun_steps = tmp_path / "rerun-steps"
    rerun = _script(*command[1:], steps=rerun_steps)  # exactly as printed, but counted
    _, rerun_err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, rerun_err
    assert _steps_done(rerun_steps) == 8 - saved  # it did not start again at step 0
    _, reference_err = reference.communicate(timeout=300)
    assert reference.returncode == 0, reference_err
    ours = load_file(out / "final_model_random" / "adapter_model.safetensors")
    theirs = load_file(tmp_path / "reference" / "final_model_random" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], atol=1e-6), name
    rows = read_step_log(out / "training_log_random.csv")
    assert [r.step for r in rows] == list(range(9))  # step 0 and steps 1-8, once each
    COUNTS["faults handled"] += 1


def _as_script() -> None:
    """`svdlora ARGS`, counting optimizer steps into a file and held where asked."""
    log, hold = Path(os.environ["SVDLORA_TEST_STEPS"]), os.environ["SVDLORA_TEST_HOLD"]
    hold_at = int(os.environ["SVDLORA_TEST_HOLD_AT"])

    done = [0]

    def on_step() -> None:
        done[0] += 1
        with log.open("a") as handle:
            handle.write(f"{done[0]}\n")
        while done[0] == hold_at and hold and Path(hold).exists():
            time.sleep(0.05)

    count_steps(on_step)
    from svdlora_cli.cli.app import main

    sys.argv = ["svdlora", *sys.argv[1:]]
    main()


if __name__ == "__main__":
    _as_script()
