"""`svdlora svd`: rank-r decomposition of every target's dW, its spectra and a PEFT adapter."""

from __future__ import annotations

from typing import Annotated

import typer

from ._options import (
    DEFAULT_OUTPUT_DIR,
    BaseModelOpt,
    CacheDirOpt,
    CacheSizeOpt,
    DeviceOpt,
    DtypePolicyOpt,
    ExcludeOpt,
    IncludeOpt,
    JsonOpt,
    NoCacheOpt,
    OutputDirOpt,
    RankOpt,
    TeacherModelOpt,
)
from ._output import cache_options, emit, hooks, require


def svd(
    base_model: BaseModelOpt = None,
    teacher_model: TeacherModelOpt = None,
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
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    dtype_policy: DtypePolicyOpt = "round",
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
            "(default: on below 1B parameters). The structural check always runs.",
        ),
    ] = None,
    output_dir: OutputDirOpt = None,
    cache_dir: CacheDirOpt = None,
    cache_size: CacheSizeOpt = None,
    no_cache: NoCacheOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Decompose dW per target; write factors, a PEFT adapter, spectra JSON, report and plot.

    Under torchrun the tensors are split across the processes; rank 0 writes the outputs.
    """
    from ..reporting.tables import svd_table
    from ..workflows import svd as workflow

    options = workflow.SvdOptions(
        base_model=require(base_model, "--base-model", "base_model"),
        teacher_model=require(teacher_model, "--teacher-model", "teacher_model"),
        rank=rank,
        energy=energy,
        max_rank=max_rank,
        method=method,
        device=device,
        split=split,
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
        dtype_policy=dtype_policy,
        cache_rank=cache_rank,
        oversample=oversample,
        power_iters=power_iters,
        seed=seed,
        plot=plot,
        verify=verify,
        output_dir=output_dir or DEFAULT_OUTPUT_DIR,
        cache=cache_options(cache_dir, no_cache, cache_size),
    )
    emit(workflow.run(options, hooks()), json_output, svd_table)
