"""`svdlora sweep`: the seed's rank study from one cached decomposition."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import typer

from ._groups import pair_options, training_options
from ._options import (
    EvalDataOpt,
    JsonOpt,
    SeedOpt,
    TrainDataOpt,
)
from ._output import emit, hooks


@training_options(learning_rate=2e-4, epochs=1)
@pair_options()
def sweep(
    ranks: Annotated[str, typer.Option("--ranks", help="Comma list of ranks.")] = "4,8,16,32,64",
    method: Annotated[str, typer.Option("--method", help="auto, exact or randomized.")] = "auto",
    train: Annotated[
        bool,
        typer.Option("--train", help="Also train an SVD-init student per rank and a random one."),
    ] = False,
    train_data: TrainDataOpt = None,
    eval_data: EvalDataOpt = None,
    seed: SeedOpt = 0,
    json_output: JsonOpt = False,
    pair: Any = None,
    config: Any = None,  # a TrainConfig built from the training options
) -> None:
    """Energy and error against rank per module type; with --train, final loss against rank."""
    from ..analysis.sweep import parse_ranks
    from ..reporting.tables import sweep_table
    from ..workflows import sweep as workflow

    options = workflow.SweepOptions(
        **pair,
        ranks=tuple(parse_ranks(ranks)),
        method=method,
        train=dataclasses.replace(config, seed=seed) if train else None,
        train_data=train_data,
        eval_data=eval_data,
    )
    emit(workflow.run(options, hooks()), json_output, sweep_table)
