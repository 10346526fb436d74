"""The training options are listed once and fill TrainConfig exactly."""

from __future__ import annotations

import dataclasses

import pytest

from svdlora_cli.cli._training import TRAINING_OPTIONS, with_training_options
from svdlora_cli.cli.app import app
from svdlora_cli.training.loop import TrainConfig

# Set by each command itself (seed: --seed or --seeds) or fixed (the clip norm).
NOT_OPTIONS = {"seed", "max_grad_norm"}


def test_every_trainconfig_field_has_exactly_one_option():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    covered = set(TRAINING_OPTIONS) | {"learning_rate", "precision"}
    assert covered | NOT_OPTIONS == fields
    assert not covered & NOT_OPTIONS


@pytest.mark.parametrize("command", ["train", "train-teacher", "sweep"])
def test_each_training_command_takes_every_option(command):
    import typer

    click_command = typer.main.get_command(app).commands[command]
    names = {p.name for p in click_command.params}
    assert set(TRAINING_OPTIONS) | {"learning_rate", "bf16", "fp16"} <= names
    assert "config" not in names


def test_the_decorator_builds_the_config_and_checks_its_target():
    seen = {}

    @with_training_options(learning_rate=1e-3, epochs=2)
    def command(name: str = "x", config=None) -> None:
        seen["config"], seen["name"] = config, name

    values = {n: d for n, (_, d) in TRAINING_OPTIONS.items()}
    command(name="y", **{**values, "epochs": 3}, learning_rate=0.5, bf16=True, fp16=False)
    assert seen["name"] == "y"
    assert seen["config"] == TrainConfig(epochs=3, learning_rate=0.5, precision="bf16")
    defaults = {p: param.default for p, param in command.__signature__.parameters.items()}
    assert defaults["epochs"] == 2 and defaults["learning_rate"] == 1e-3

    with pytest.raises(TypeError, match="config"):
        with_training_options(learning_rate=1.0)(lambda name="x": None)
