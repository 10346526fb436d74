"""`svdlora train`: LoRA students from random, SVD and control inits (seed plan steps 3-4)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from ._groups import training_options
from ._options import (
    AnswerFieldOpt,
    BaseModelOpt,
    CacheDirOpt,
    CacheSizeOpt,
    EvalDataOpt,
    JsonOpt,
    NoCacheOpt,
    PromptFieldOpt,
    RankOpt,
    TeacherModelOpt,
    TrainDataOpt,
)
from ._output import cache_options, emit, hooks, require


def _seeds(text: str) -> list[int]:
    from ..errors import InvalidOptionError

    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise InvalidOptionError(
            f"--seeds {text!r} is not a list of integers", "use e.g. --seeds 0,1,2"
        ) from exc
    if not seeds or len(set(seeds)) != len(seeds):
        raise InvalidOptionError(
            f"--seeds {text!r} must list distinct integers", "use e.g. --seeds 0,1,2"
        )
    return seeds


@training_options(learning_rate=2e-4)
def train(
    base_model: BaseModelOpt = None,
    train_data: TrainDataOpt = None,
    init: Annotated[
        str,
        typer.Option(
            "--init",
            help="random, gaussian, svd, svd-sqrt, subspace, pissa, olora, lora-ga, eva or "
            "corda (comma list ok). svd, svd-sqrt and subspace need --svd-factors or "
            "--teacher-model; lora-ga, eva and corda read the first 4 training micro-batches of "
            "the seed's order to initialise (lora-ga needs 2 x rank <= every target's smaller "
            "side; corda needs the attrs package).",
        ),
    ] = "random",
    svd_factors: Annotated[
        str | None,
        typer.Option("--svd-factors", help="svd_factors_rank*.safetensors from `svdlora svd`."),
    ] = None,
    allow_other_base: Annotated[
        bool,
        typer.Option(
            "--allow-other-base",
            help="Use --svd-factors made from another base of the same shapes (a warning, "
            "not an error).",
        ),
    ] = False,
    teacher_model: TeacherModelOpt = None,
    rank: RankOpt = 16,
    lora_alpha: Annotated[
        float | None, typer.Option("--lora-alpha", help="LoRA alpha (default: r).")
    ] = None,
    lora_dropout: Annotated[float, typer.Option("--lora-dropout", help="LoRA dropout.")] = 0.0,
    target_modules: Annotated[
        list[str] | None,
        typer.Option("--target-modules", help="Regex of target tensors (default: svd's)."),
    ] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="One arm per seed, e.g. 0,1,2.")] = "0",
    learning_rates: Annotated[
        str | None,
        typer.Option(
            "--learning-rates",
            help="A grid, e.g. 1e-4,3e-4,1e-3: one run per (init, learning rate, seed); "
            "replaces --learning-rate.",
        ),
    ] = None,
    eval_data: EvalDataOpt = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            "--output-dir", "-o", help="Folder (default: ./svdlora-runs/training_results)."
        ),
    ] = None,
    prompt_field: PromptFieldOpt = None,
    answer_field: AnswerFieldOpt = None,
    cache_dir: CacheDirOpt = None,
    cache_size: CacheSizeOpt = None,
    no_cache: NoCacheOpt = False,
    json_output: JsonOpt = False,
    config: Any = None,  # a TrainConfig built from the training options
) -> None:
    """Train LoRA arms on identical batches; writes final_model_{init}/, training_log_{init}.csv."""
    from ..data import FieldNames
    from ..reporting.tables import training_table
    from ..training.inits import parse_inits
    from ..workflows import train as workflow

    seed_list = _seeds(seeds)
    options = workflow.TrainOptions(
        base_model=require(base_model, "--base-model", "base_model"),
        config=dataclasses.replace(config, seed=seed_list[0]),
        inits=tuple(parse_inits(init)),
        seeds=tuple(seed_list),
        learning_rates=(
            workflow.parse_learning_rates(learning_rates) if learning_rates is not None else ()
        ),
        rank=require(rank, "--rank", "rank"),
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=tuple(target_modules or ()),
        svd_factors=svd_factors,
        allow_other_base=allow_other_base,
        teacher_model=teacher_model,
        train_data=train_data,
        eval_data=eval_data,
        fields=FieldNames(prompt_field, answer_field),
        output_dir=output_dir or Path("svdlora-runs") / "training_results",
        cache=cache_options(cache_dir, no_cache, cache_size),
    )
    emit(workflow.run(options, hooks()), json_output, training_table)


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
