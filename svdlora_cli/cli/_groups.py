"""Option groups, listed once: the training options (one TrainConfig) and the model-pair
options of the extraction commands (base, teacher, targets, output folder, cache).

A group adds its options to a command's signature (typer reads it) and hands the
command one value built from them, in the parameter named after the group, so
commands that share options never repeat them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from ..workflows.common import DEFAULT_OUTPUT_DIR
from ._options import (
    BaseModelOpt,
    BatchSizeOpt,
    Bf16Opt,
    CacheDirOpt,
    CacheSizeOpt,
    DtypePolicyOpt,
    EpochsOpt,
    EvalEveryOpt,
    EvalLimitOpt,
    ExcludeOpt,
    Fp16Opt,
    GradAccumOpt,
    GradCkptOpt,
    IncludeOpt,
    MaxLengthOpt,
    MaxStepsOpt,
    NoCacheOpt,
    OutputDirOpt,
    PackingOpt,
    ResumeOpt,
    SaveEveryOpt,
    SchedulerOpt,
    TeacherModelOpt,
    TokensPerStepOpt,
    TrainDeviceOpt,
    TrustRemoteCodeOpt,
    WarmupOpt,
    WeightDecayOpt,
)
from ._output import cache_options, precision, require

LearningRateOpt = Annotated[float, typer.Option("--learning-rate", help="AdamW learning rate.")]


@dataclass(frozen=True)
class OptionGroup:
    """Options (name -> (Annotated type, default)) that `build` turns into one value."""

    target: str
    options: Mapping[str, tuple[Any, Any]]
    build: Callable[[dict[str, Any]], Any]
    first: bool = False

    def __call__(self, **defaults: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorate a command that takes a parameter named `self.target`; `defaults`
        overrides an option's default for this command (e.g. epochs=1)."""

        def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
            own = list(inspect.signature(command, eval_str=True).parameters.values())
            if self.target not in {p.name for p in own}:
                raise TypeError(f"{command.__name__} must take a `{self.target}` parameter")
            added = [
                inspect.Parameter(
                    name,
                    inspect.Parameter.KEYWORD_ONLY,
                    annotation=kind,
                    default=defaults.get(name, value),
                )
                for name, (kind, value) in self.options.items()
            ]
            kept = [
                p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p.name != self.target
            ]
            context = [p for p in kept if p.annotation is typer.Context]
            rest = [p for p in kept if p.annotation is not typer.Context]
            params = [*context, *added, *rest] if self.first else [*context, *rest, *added]

            @functools.wraps(command)
            def wrapper(**values: Any) -> Any:
                group = {name: values.pop(name) for name in self.options}
                return command(**values, **{self.target: self.build(group)})

            wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
            wrapper.__annotations__ = {p.name: p.annotation for p in params}
            return wrapper

        return decorate


def _train_config(values: dict[str, Any]) -> Any:
    from ..training.config import TrainConfig

    bf16, fp16 = values.pop("bf16"), values.pop("fp16")
    return TrainConfig(**values, precision=precision(bf16, fp16))


# Each name is a TrainConfig field (bf16/fp16 become `precision`); a test checks they agree.
training_options = OptionGroup(
    "config",
    {
        "epochs": (EpochsOpt, 5),
        "learning_rate": (LearningRateOpt, 2e-4),
        "batch_size": (BatchSizeOpt, 4),
        "tokens_per_step": (TokensPerStepOpt, None),
        "grad_accum": (GradAccumOpt, 1),
        "max_length": (MaxLengthOpt, 512),
        "eval_every": (EvalEveryOpt, 0),
        "eval_limit": (EvalLimitOpt, None),
        "max_steps": (MaxStepsOpt, None),
        "bf16": (Bf16Opt, False),
        "fp16": (Fp16Opt, False),
        "gradient_checkpointing": (GradCkptOpt, False),
        "packing": (PackingOpt, True),
        "device": (TrainDeviceOpt, "auto"),
        "warmup_steps": (WarmupOpt, 0),
        "lr_scheduler": (SchedulerOpt, "linear"),
        "weight_decay": (WeightDecayOpt, 0.0),
        "trust_remote_code": (TrustRemoteCodeOpt, False),
        "save_every": (SaveEveryOpt, 0),
        "resume": (ResumeOpt, False),
    },
    _train_config,
)


def _pair(values: dict[str, Any]) -> dict[str, Any]:
    return {
        "base_model": require(values["base_model"], "--base-model", "base_model"),
        "teacher_model": require(values["teacher_model"], "--teacher-model", "teacher_model"),
        "include": tuple(values["include"] or ()),
        "exclude": tuple(values["exclude"] or ()),
        "dtype_policy": values["dtype_policy"],
        "output_dir": values["output_dir"] or DEFAULT_OUTPUT_DIR,
        "cache": cache_options(values["cache_dir"], values["no_cache"], values["cache_size"]),
    }


# The fields every extraction workflow's options record shares.
pair_options = OptionGroup(
    "pair",
    {
        "base_model": (BaseModelOpt, None),
        "teacher_model": (TeacherModelOpt, None),
        "include": (IncludeOpt, None),
        "exclude": (ExcludeOpt, None),
        "dtype_policy": (DtypePolicyOpt, "round"),
        "output_dir": (OutputDirOpt, None),
        "cache_dir": (CacheDirOpt, None),
        "cache_size": (CacheSizeOpt, None),
        "no_cache": (NoCacheOpt, False),
    },
    _pair,
    first=True,
)
