"""The `svd` step: rank-r decomposition of every target's dW, its spectra and a PEFT adapter."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .common import (
    DEFAULT_OUTPUT_DIR,
    CacheOptions,
    Document,
    Hooks,
    check,
    extract,
    is_primary_process,
    record,
)

if TYPE_CHECKING:
    from ..cache import ArtifactCache

# Defaults shared with the core (kept literal so that building options imports no torch).
CACHE_RANK = 64
POWER_ITERS = 3


@dataclass(frozen=True)
class SvdOptions:
    """Everything `svdlora svd` takes."""

    base_model: str
    teacher_model: str
    rank: int | None = None
    energy: float | None = None
    max_rank: int = 64
    method: str = "auto"
    device: str = "cpu"
    split: str = "b"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    cache_rank: int = CACHE_RANK
    oversample: int | None = None
    power_iters: int = POWER_ITERS
    seed: int = 0
    plot: bool = True
    output_dir: Path = DEFAULT_OUTPUT_DIR
    cache: CacheOptions = field(default_factory=CacheOptions)

    def validate(self) -> None:
        """Ranges the core does not check itself (rank, energy and method are checked there)."""
        from ..adapters import SPLITS

        check(
            self.split in SPLITS,
            f"unknown --split {self.split!r}",
            f"use one of: {', '.join(SPLITS)}",
        )
        check(
            self.energy is None or math.isfinite(self.energy),
            f"--energy must be a finite number, got {self.energy}",
            "use e.g. --energy 0.9",
        )
        check(
            self.oversample is None or self.oversample >= 0,
            f"--oversample must be >= 0, got {self.oversample}",
            "leave it out (k/2) or use e.g. --oversample 8",
        )
        check(
            self.power_iters >= 0,
            f"--power-iters must be >= 0, got {self.power_iters}",
            "use e.g. --power-iters 3",
        )


def run(
    options: SvdOptions, hooks: Hooks | None = None, cache: ArtifactCache | None = None
) -> Document | None:
    """Factors, PEFT adapter, analysis JSON, report and plot; the document (None off rank 0)."""
    from ..artifacts import write_svd_outputs
    from ..extraction import run_svd

    options.validate()
    hooks = hooks or Hooks()
    result = extract(
        options.output_dir,
        options.cache,
        cache,
        hooks.items("SVD"),
        lambda c, update: run_svd(
            options.base_model,
            options.teacher_model,
            c,
            rank=options.rank,
            energy=options.energy,
            max_rank=options.max_rank,
            method=options.method,
            device=options.device,
            include=options.include,
            exclude=options.exclude,
            cache_rank=options.cache_rank,
            oversample=options.oversample,
            power_iters=options.power_iters,
            seed=options.seed,
            progress=update,
        ),
    )
    if not is_primary_process():  # the other ranks computed their share
        return None
    return write_svd_outputs(
        result,
        options.output_dir,
        options.base_model,
        options.teacher_model,
        options.split,
        record(options),
        plot=options.plot,
    )
