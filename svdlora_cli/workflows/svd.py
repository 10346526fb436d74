"""The `svd` step: rank-r decomposition of every target's dW, its spectra and a PEFT adapter."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .common import (
    Document,
    Hooks,
    PairOptions,
    check,
    extraction_step,
    record,
)

if TYPE_CHECKING:
    from ..spectra.svd_step import SvdResult
    from ..store.cache import ArtifactCache

# Defaults shared with the core (kept literal so that building options imports no torch).
CACHE_RANK = 64
POWER_ITERS = 3


@dataclass(frozen=True)
class SvdOptions(PairOptions):
    """Everything `svdlora svd` takes."""

    rank: int | None = None
    energy: float | None = None
    max_rank: int = 64
    method: str = "auto"
    device: str = "cpu"
    split: str = "b"
    cache_rank: int = CACHE_RANK
    oversample: int | None = None
    power_iters: int = POWER_ITERS
    seed: int = 0
    plot: bool = True
    verify: bool | None = None  # None: probe the adapter's logits below VERIFY_MAX_PARAMETERS

    def validate(self) -> None:
        """Ranges the core does not check itself (rank, energy and method are checked there)."""
        from ..adapters.factors import SPLITS

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
    from ..spectra.svd_step import run_svd

    options.validate()
    refuse_output_in_model(options.output_dir)
    return extraction_step(
        options,
        hooks,
        cache,
        "SVD",
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
            dtype_policy=options.dtype_policy,
        ),
        lambda result: write_svd_outputs(
            result,
            options.output_dir,
            options.base_model,
            options.teacher_model,
            options.split,
            record(options),
            plot=options.plot,
            verify=lambda adapter: verification(options, result, adapter),
        ),
    )


def refuse_output_in_model(output_dir: Path) -> None:
    """An output folder that is a model folder, or lies inside one, would mix svdlora's
    files into a checkpoint (and may shadow its weights): refused before any work."""
    from ..errors import OutputError
    from ..models.refs import enclosing_model_folder

    model = enclosing_model_folder(output_dir)
    if model is not None:
        where = "is" if model == output_dir.expanduser().resolve() else "lies inside"
        raise OutputError(
            f"output folder {output_dir} {where} the model folder {model}",
            "pass an --output-dir outside every model folder, e.g. svdlora-out",
        )


def verification(options: SvdOptions, result: SvdResult, adapter: Path) -> dict:
    """The structural check always; the logits probe with --verify (default: small models).

    The probe merges the SVD's own rank-r deltas, not the adapter file's: a wrong scale,
    orientation or split in the adapter shows up as a mismatch.
    """
    from ..adapters.checks import LazyDeltas
    from ..adapters.verify import VERIFY_MAX_PARAMETERS, parameter_count, verify_adapter
    from ..models.refs import resolve_model_path

    if result.coverage.get("checked") is False:
        reason = result.coverage.get("reason")
        return {"structural": {"ok": None, "skipped": reason}, "probe": None}
    probe = options.verify
    reason = "--verify" if probe else "--no-verify"
    if probe is None:
        count = parameter_count(resolve_model_path(options.base_model))
        probe = count < VERIFY_MAX_PARAMETERS
        reason = f"{count:,} parameters: " + (
            "on by default below 250M" if probe else "off by default from 250M (pass --verify)"
        )
    expected = None
    if probe:
        expected = LazyDeltas(result.factors("b"), lambda f: f.B @ f.A)
    doc = verify_adapter(adapter, options.base_model, probe=probe, expected=expected)
    doc["probe_reason"] = reason
    return doc
