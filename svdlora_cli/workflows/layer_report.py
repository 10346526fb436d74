"""The `layer-report` step: per-layer size and rank of dW, by type, depth and group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .common import Document, Hooks, PairOptions, extraction_step, record, same_named
from .flags import option
from .vocabulary import METHOD, RANK

if TYPE_CHECKING:
    from ..store.cache import ArtifactCache


@dataclass(frozen=True)
class LayerReportOptions(PairOptions):
    """Everything `svdlora layer-report` takes."""

    rank: int = RANK.field(16)
    sort: str = option(
        "layer",
        help="layer, name, delta_norm, rel_change, energy, rank_90, effective_rank or share.",
    )
    intruders: bool = option(False, help="Count intruder dimensions (costly).")
    intruder_k: int = option(10, help="Top-k tuned singular vectors checked.")
    intruder_threshold: float = option(0.5, help="Max |cos| below which a vector intrudes.")
    method: str = METHOD.field("auto")


def run(
    options: LayerReportOptions, hooks: Hooks | None = None, cache: ArtifactCache | None = None
) -> Document | None:
    """layer_report.json and its heatmap; the document (None on non-primary ranks)."""
    from ..analysis.layers import layer_report
    from ..artifacts import write_layer_outputs
    from ..spectra.svd_step import SvdScope

    return extraction_step(
        options,
        hooks,
        cache,
        "layers",
        lambda c, update: layer_report(
            tuned_model=options.teacher_model,
            cache=c,
            scope=SvdScope(**same_named(SvdScope, options), progress=update),
            **same_named(layer_report, options, "cache"),  # base_model, rank, sort, intruder*
        ),
        lambda doc: write_layer_outputs(
            {"base_model": options.base_model, "tuned_model": options.teacher_model, **doc},
            options.output_dir,
            record(options),
        ),
    )
