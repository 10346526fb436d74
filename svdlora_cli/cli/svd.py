"""`svdlora svd`: rank-r decomposition of every target's dW, its spectra and a PEFT adapter."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ._groups import pair_options
from ._options import (
    DeviceOpt,
    JsonOpt,
    RankOpt,
)
from ._output import emit, hooks


@pair_options()
def svd(
    rank: RankOpt = None,
    energy: Annotated[
        float | None,
        typer.Option("--energy", help="Per-module smallest rank keeping this energy share (0, 1]."),
    ] = None,
    max_rank: Annotated[
        int, typer.Option("--max-rank", help="Cap on per-module rank with --energy.")
    ] = 64,
    method: Annotated[str, typer.Option("--method", help="auto, exact or randomized.")] = "auto",
    device: DeviceOpt = "cpu",
    split: Annotated[
        str, typer.Option("--split", help="b: B = U_r S_r, A = Vh_r; sqrt: sqrt(S_r) on both.")
    ] = "b",
    cache_rank: Annotated[
        int,
        typer.Option(
            "--cache-rank", help="Factors kept per tensor in the cache (any rank up to it is free)."
        ),
    ] = 64,
    oversample: Annotated[
        int | None,
        typer.Option("--oversample", help="Randomized SVD oversampling (default: k/2)."),
    ] = None,
    power_iters: Annotated[
        int, typer.Option("--power-iters", help="Randomized SVD power iterations.")
    ] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the randomized SVD sketch.")] = 0,
    plot: Annotated[
        bool, typer.Option("--plot/--no-plot", help="Write svd_analysis_*.png.")
    ] = True,
    verify: Annotated[
        bool | None,
        typer.Option(
            "--verify/--no-verify",
            help="Check the adapter's logits through PEFT against a direct merge "
            "(default: on below 250M parameters). The structural and per-module delta "
            "checks always run.",
        ),
    ] = None,
    json_output: JsonOpt = False,
    pair: Any = None,
) -> None:
    """Decompose dW per target; write factors, a PEFT adapter, spectra JSON, report and plot.

    Under torchrun the tensors are split across the processes; rank 0 writes the outputs.
    """
    from ..reporting.tables import svd_table
    from ..workflows import svd as workflow

    options = workflow.SvdOptions(
        **pair,
        rank=rank,
        energy=energy,
        max_rank=max_rank,
        method=method,
        device=device,
        split=split,
        cache_rank=cache_rank,
        oversample=oversample,
        power_iters=power_iters,
        seed=seed,
        plot=plot,
        verify=verify,
    )
    emit(workflow.run(options, hooks()), json_output, svd_table)
