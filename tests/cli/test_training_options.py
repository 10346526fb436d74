"""The option groups are listed once: the training options fill TrainConfig exactly, and the
model-pair options fill every extraction workflow's shared fields."""

from __future__ import annotations

import dataclasses

import pytest

from svdlora_cli.cli._groups import options_from
from svdlora_cli.cli.app import app
from svdlora_cli.training.config import TrainConfig
from svdlora_cli.workflows.common import PairOptions
from svdlora_cli.workflows.flags import form
from svdlora_cli.workflows.vocabulary import TRAINING

# Set by each command itself (train: --seeds) or fixed (the clip norm).
NOT_OPTIONS = {"max_grad_norm"}
TRAINING_OPTIONS = {*TRAINING.flags, *TRAINING.extra}


def _command(name: str):
    import typer

    return typer.main.get_command(app).commands[name]


def test_every_trainconfig_field_has_exactly_one_option():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    covered = (TRAINING_OPTIONS - {"bf16", "fp16"}) | {"precision"}
    assert covered | NOT_OPTIONS == fields
    assert not covered & NOT_OPTIONS


@pytest.mark.parametrize("command", ["train", "train-teacher", "sweep"])
def test_each_training_command_takes_every_training_option(command):
    names = {p.name for p in _command(command).params}
    own_seed = {"seed"} if command == "train" else set()  # train: one run per --seeds value
    assert TRAINING_OPTIONS - own_seed <= names and "config" not in names
    assert ("seeds" in names) == (command == "train")


@pytest.mark.parametrize("command", ["delta", "svd", "layer-report", "sweep"])
def test_each_extraction_command_takes_the_pair_options_first(command):
    pair = [e.name for e in form(PairOptions).entries()]
    params = [p.name for p in _command(command).params]
    assert params[: len(pair)] == pair


def test_a_record_builds_its_value_and_checks_its_target():
    seen = {}

    @dataclasses.dataclass(frozen=True)
    class Options:
        config: TrainConfig = TRAINING.but(learning_rate=1e-3, epochs=2).field()  # noqa: RUF009

    @options_from(Options)
    def command(name: str = "x", options=None) -> None:
        seen["config"], seen["name"] = options.config, name

    values = {e.name: e.default for e in form(Options).entries()}
    command(name="y", **{**values, "epochs": 3, "learning_rate": 0.5, "bf16": True})
    assert seen["name"] == "y"
    assert seen["config"] == TrainConfig(epochs=3, learning_rate=0.5, precision="bf16")
    defaults = {p: param.default for p, param in command.__signature__.parameters.items()}
    assert defaults["epochs"] == 2 and defaults["learning_rate"] == 1e-3

    with pytest.raises(TypeError, match="options"):
        options_from(Options)(lambda name="x": None)
