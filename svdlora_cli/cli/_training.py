"""The training options, listed once: every command that trains takes them as one TrainConfig.

`with_training_options` adds the options below to a command's signature (typer reads
it) and hands the command a `config: TrainConfig` built from them, so `train`,
`train-teacher` and `sweep --train` share one list: each entry names the TrainConfig
field it fills, and a test checks the two agree.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from ._options import (
    BatchSizeOpt,
    Bf16Opt,
    EpochsOpt,
    EvalEveryOpt,
    EvalLimitOpt,
    Fp16Opt,
    GradAccumOpt,
    GradCkptOpt,
    MaxLengthOpt,
    MaxStepsOpt,
    ResumeOpt,
    SaveEveryOpt,
    SchedulerOpt,
    TrainDeviceOpt,
    TrustRemoteCodeOpt,
    WarmupOpt,
    WeightDecayOpt,
)
from ._output import precision

# TrainConfig field -> (its option, default). The learning rate's default is per command.
TRAINING_OPTIONS: dict[str, tuple[Any, Any]] = {
    "epochs": (EpochsOpt, 5),
    "batch_size": (BatchSizeOpt, 4),
    "grad_accum": (GradAccumOpt, 1),
    "max_length": (MaxLengthOpt, 512),
    "eval_every": (EvalEveryOpt, 0),
    "eval_limit": (EvalLimitOpt, None),
    "max_steps": (MaxStepsOpt, None),
    "gradient_checkpointing": (GradCkptOpt, False),
    "device": (TrainDeviceOpt, "auto"),
    "warmup_steps": (WarmupOpt, 0),
    "lr_scheduler": (SchedulerOpt, "linear"),
    "weight_decay": (WeightDecayOpt, 0.0),
    "trust_remote_code": (TrustRemoteCodeOpt, False),
    "save_every": (SaveEveryOpt, 0),
    "resume": (ResumeOpt, False),
}
LearningRateOpt = Annotated[float, typer.Option("--learning-rate", help="AdamW learning rate.")]
# Options that become one TrainConfig field together (--bf16/--fp16 -> precision).
_PRECISION = {"bf16": (Bf16Opt, False), "fp16": (Fp16Opt, False)}


def with_training_options(
    learning_rate: float, **defaults: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command whose last parameter is `config`: the training options replace it.

    `defaults` overrides an option's default for this command (e.g. epochs=1).
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = list(inspect.signature(command, eval_str=True).parameters.values())
        if not own or own[-1].name != "config":
            raise TypeError(f"{command.__name__} must take `config` as its last parameter")
        options = {
            **{
                name: (kind, defaults.get(name, value))
                for name, (kind, value) in TRAINING_OPTIONS.items()
            },
            "learning_rate": (LearningRateOpt, learning_rate),
            **_PRECISION,
        }
        added = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=value)
            for name, (kind, value) in options.items()
        ]
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[:-1]] + added

        @functools.wraps(command)
        def wrapper(**values: Any) -> Any:
            from ..training.loop import TrainConfig

            config = TrainConfig(
                **{name: values.pop(name) for name in TRAINING_OPTIONS},
                learning_rate=values.pop("learning_rate"),
                precision=precision(values.pop("bf16"), values.pop("fp16")),
            )
            return command(**values, config=config)

        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate
