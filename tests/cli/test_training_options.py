"""The option groups are listed once: the training options fill TrainConfig exactly, and the
model-pair options fill every extraction workflow's shared fields."""

from __future__ import annotations

import dataclasses

import pytest

from svdlora_cli.cli._groups import pair_options, training_options
from svdlora_cli.cli.app import app
from svdlora_cli.training.config import TrainConfig

# Set by each command itself (seed: --seed or --seeds) or fixed (the clip norm).
NOT_OPTIONS = {"seed", "max_grad_norm"}


def _command(name: str):
    import typer

    return typer.main.get_command(app).commands[name]


def test_every_trainconfig_field_has_exactly_one_option():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    covered = (set(training_options.options) - {"bf16", "fp16"}) | {"precision"}
    assert covered | NOT_OPTIONS == fields
    assert not covered & NOT_OPTIONS


@pytest.mark.parametrize("command", ["train", "train-teacher", "sweep"])
def test_each_training_command_takes_every_training_option(command):
    names = {p.name for p in _command(command).params}
    assert set(training_options.options) <= names and "config" not in names


@pytest.mark.parametrize("command", ["delta", "svd", "layer-report", "sweep"])
def test_each_extraction_command_takes_the_pair_options_first(command):
    from svdlora_cli.workflows import delta, layer_report, svd, sweep

    params = [p.name for p in _command(command).params]
    assert params[: len(pair_options.options)] == list(pair_options.options)
    records = {"delta": delta.DeltaOptions, "svd": svd.SvdOptions}
    records |= {"layer-report": layer_report.LayerReportOptions, "sweep": sweep.SweepOptions}
    fields = {f.name for f in dataclasses.fields(records[command])}
    built = pair_options.build(
        {name: default for name, (_, default) in pair_options.options.items()}
        | {"base_model": "b", "teacher_model": "t"}
    )
    assert set(built) <= fields


def test_a_group_builds_its_value_and_checks_its_target():
    seen = {}

    @training_options(learning_rate=1e-3, epochs=2)
    def command(name: str = "x", config=None) -> None:
        seen["config"], seen["name"] = config, name

    values = {n: d for n, (_, d) in training_options.options.items()}
    command(name="y", **{**values, "epochs": 3, "learning_rate": 0.5, "bf16": True})
    assert seen["name"] == "y"
    assert seen["config"] == TrainConfig(epochs=3, learning_rate=0.5, precision="bf16")
    defaults = {p: param.default for p, param in command.__signature__.parameters.items()}
    assert defaults["epochs"] == 2 and defaults["learning_rate"] == 1e-3

    with pytest.raises(TypeError, match="config"):
        training_options(learning_rate=1.0)(lambda name="x": None)
