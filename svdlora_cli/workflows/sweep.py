"""The `sweep` step: the seed's rank study from one cached decomposition."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..training.config import TrainConfig
from .common import (
    Document,
    Hooks,
    PairOptions,
    extraction,
    is_primary_process,
    record,
    same_named,
)
from .flags import option
from .vocabulary import EVAL_DATA, METHOD, TRAIN_DATA, TRAINING

if TYPE_CHECKING:
    from ..store.cache import ArtifactCache


def _ranks(text: str) -> tuple[int, ...]:
    from ..analysis.sweep import parse_ranks

    return tuple(parse_ranks(text))


@dataclass(frozen=True)
class SweepOptions(PairOptions):
    """Everything `svdlora sweep` takes; with `train`, a student per rank is trained with
    `config`."""

    ranks: tuple[int, ...] = option(
        (4, 8, 16, 32, 64),
        help="Comma list of ranks (default: 4,8,16,32,64).",
        type=str,
        parse=_ranks,
    )
    method: str = METHOD.field("auto")
    train: bool = option(False, help="Also train an SVD-init student per rank and a random one.")
    train_data: str | None = TRAIN_DATA.field(None)
    eval_data: str | None = EVAL_DATA.field(None)
    config: TrainConfig = TRAINING.but(epochs=1).field(factory=TrainConfig)


def run(
    options: SweepOptions, hooks: Hooks | None = None, cache: ArtifactCache | None = None
) -> Document | None:
    """sweep.json, sweep_energy.png and, with training, rank_study.png; the document."""
    from ..analysis.sweep import rank_sweep, train_rank_study
    from ..artifacts import write_sweep_outputs
    from ..spectra.svd_step import SvdScope

    hooks = hooks or Hooks()
    if options.train:
        options.config.validate()
    with extraction(options.output_dir, options.cache, cache) as c:
        with hooks.items("SVD") as update:
            scope = SvdScope(**same_named(SvdScope, options), progress=update)
            result = rank_sweep(
                options.base_model, options.teacher_model, c, list(options.ranks), scope
            )
        study = None
        if options.train:  # every rank trains (students may be distributed)
            study = train_rank_study(
                options.base_model,
                result,
                options.output_dir / "rank_study",
                options.config,
                options.train_data,
                options.eval_data,
                hooks.steps,
            )
        if not is_primary_process():  # the other ranks computed their share
            return None
        doc = {
            "base_model": options.base_model,
            "tuned_model": options.teacher_model,
            "ranks": [{k: v for k, v in row.items() if k != "factors"} for row in result["ranks"]],
            "cache": result["cache"],
            "dtypes": result.get("dtypes"),
            "study": study,
            "warnings": result["warnings"],
        }
        return write_sweep_outputs(doc, options.output_dir, record(options))
