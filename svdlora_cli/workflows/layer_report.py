"""The `layer-report` step: per-layer size and rank of dW, by type, depth and group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .common import (
    Document,
    Hooks,
    PairOptions,
    extraction_step,
    record,
)

if TYPE_CHECKING:
    from ..store.cache import ArtifactCache


@dataclass(frozen=True)
class LayerReportOptions(PairOptions):
    """Everything `svdlora layer-report` takes."""

    rank: int = 16
    sort: str = "layer"
    intruders: bool = False
    intruder_k: int = 10
    intruder_threshold: float = 0.5
    method: str = "auto"


def run(
    options: LayerReportOptions, hooks: Hooks | None = None, cache: ArtifactCache | None = None
) -> Document | None:
    """layer_report.json and its heatmap; the document (None on non-primary ranks)."""
    from ..analysis.layers import layer_report
    from ..artifacts import write_layer_outputs

    return extraction_step(
        options,
        hooks,
        cache,
        "layers",
        lambda c, update: layer_report(
            options.base_model,
            options.teacher_model,
            c,
            options.rank,
            options.include,
            options.exclude,
            options.method,
            options.sort,
            options.intruders,
            options.intruder_k,
            options.intruder_threshold,
            update,
            dtype_policy=options.dtype_policy,
        ),
        lambda doc: write_layer_outputs(
            {"base_model": options.base_model, "tuned_model": options.teacher_model, **doc},
            options.output_dir,
            record(options),
        ),
    )
