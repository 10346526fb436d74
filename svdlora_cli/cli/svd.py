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
    ExcludeOpt,
    IncludeOpt,
    JsonOpt,
    NoCacheOpt,
    OutputDirOpt,
    TeacherModelOpt,
)
from ._output import emit, is_primary_process, progress, require, resolve_cache


def svd(
    base_model: BaseModelOpt = None,
    teacher_model: TeacherModelOpt = None,
    rank: Annotated[int | None, typer.Option("--rank", "-r", help="Truncation rank R.")] = None,
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
    output_dir: OutputDirOpt = None,
    cache_dir: CacheDirOpt = None,
    cache_size: CacheSizeOpt = None,
    no_cache: NoCacheOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Decompose dW per target; write factors, a PEFT adapter, spectra JSON, report and plot.

    Under torchrun the tensors are split across the processes; rank 0 writes the outputs.
    """
    from ..adapters import SPLITS
    from ..artifacts import write_svd_outputs
    from ..errors import InvalidOptionError
    from ..extraction import run_svd
    from ..files import check_writable_dir
    from ..reporting.tables import svd_table

    base = require(base_model, "--base-model", "base_model")
    tuned = require(teacher_model, "--teacher-model", "teacher_model")
    if split not in SPLITS:
        raise InvalidOptionError(f"unknown --split {split!r}", f"use one of: {', '.join(SPLITS)}")
    folder = check_writable_dir(output_dir or DEFAULT_OUTPUT_DIR)
    cache = resolve_cache(cache_dir, no_cache, cache_size)
    options = {
        "rank": rank,
        "energy": energy,
        "max_rank": max_rank,
        "method": method,
        "device": device,
        "split": split,
        "include": include,
        "exclude": exclude,
        "cache_rank": cache_rank,
        "oversample": oversample,
        "power_iters": power_iters,
        "seed": seed,
    }
    try:
        with progress("SVD") as update:
            result = run_svd(
                base,
                tuned,
                cache,
                rank=rank,
                energy=energy,
                max_rank=max_rank,
                method=method,
                device=device,
                include=include or (),
                exclude=exclude or (),
                cache_rank=cache_rank,
                oversample=oversample,
                power_iters=power_iters,
                seed=seed,
                progress=update,
            )
    finally:
        cache.close()
    if not is_primary_process():  # the other ranks computed their share
        return
    doc = write_svd_outputs(result, folder, base, tuned, split, options, plot=plot)
    emit(doc, json_output, svd_table)
