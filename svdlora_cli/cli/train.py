"""`svdlora train`: LoRA students from random, SVD and control inits (seed plan steps 3-4)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

from ..workflows.train import TrainOptions
from ._groups import options_from
from ._options import JsonOpt
from ._output import emit, hooks


@options_from(TrainOptions)
def train(ctx: typer.Context, json_output: JsonOpt = False, options: Any = None) -> None:
    """Train LoRA arms on identical batches; writes final_model_{init}/, training_log_{init}.csv."""
    from ..reporting.tables import training_table
    from ..workflows import train as workflow

    workflow.check_one_learning_rate(_given(ctx, "learning_rate"), _given(ctx, "learning_rates"))
    # The first seed is the config's; every run replaces it with its own.
    config = dataclasses.replace(options.config, seed=options.seeds[0])
    options = dataclasses.replace(options, config=config)
    emit(workflow.run(options, hooks()), json_output, training_table)


def _given(ctx: Any, name: str) -> bool:
    """Whether option `name` was set: on the command line, in the environment or in
    svdlora.toml (not left at its default)."""
    source = ctx.get_parameter_source(name) if ctx is not None else None
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "DEFAULT_MAP")


RESUMABLE = ("train", "train-teacher")


def resume_advice(args: list[str], config: Path | None, stop: BaseException) -> str | None:
    """What to run after a Ctrl-C in `train` or `train-teacher`: the same command with
    --resume (a plain rerun starts at step 0), whether a checkpoint was kept, and a
    --save-every note when none was. None for the other commands."""
    import os
    import shlex

    if not args or args[0] not in RESUMABLE:
        return None
    words = ["svdlora", *(["--config", str(config)] if config else []), *args]
    if "--resume" not in args:
        words.append("--resume")
    step = getattr(stop, "checkpoint_step", ...)  # set by the training loop; ... outside it
    if step is ...:
        kept = "To resume, run:"
    elif step is None:
        finished = "; runs that finished are kept" if args[0] == "train" else ""
        kept = (
            "No checkpoint of the interrupted run was saved (add --save-every N to save one "
            f"every N steps), so it starts again at step 0{finished}. To continue, run:"
        )
    else:
        kept = f"The checkpoint at step {step} is kept. To resume from it, run:"
    launch = int(os.environ.get("WORLD_SIZE", "1")) > 1
    where = " (under the same torchrun / accelerate launch)" if launch else ""
    return f"{kept}\n  {shlex.join(words)}{where}"
