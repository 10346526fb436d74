"""The `delta` step: how much each weight changed, and what a LoRA cannot capture."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .common import Document, Hooks, PairOptions, extraction_step, record

if TYPE_CHECKING:
    from ..store.cache import ArtifactCache


@dataclass(frozen=True)
class DeltaOptions(PairOptions):
    """Everything `svdlora delta` takes."""


def run(
    options: DeltaOptions, hooks: Hooks | None = None, cache: ArtifactCache | None = None
) -> Document | None:
    """delta_analysis.json and delta_report.txt; the document (None on non-primary ranks)."""
    from ..artifacts import write_delta_outputs
    from ..spectra.delta import run_delta

    return extraction_step(
        options,
        hooks,
        cache,
        "dW",
        lambda c, update: run_delta(
            options.base_model,
            options.teacher_model,
            c,
            options.include,
            options.exclude,
            progress=update,
            dtype_policy=options.dtype_policy,
        ),
        lambda result: write_delta_outputs(
            result, options.output_dir, options.base_model, options.teacher_model, record(options)
        ),
    )
