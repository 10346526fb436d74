"""The `sweep` step: the seed's rank study from one cached decomposition."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .common import (
    Document,
    Hooks,
    PairOptions,
    extraction,
    is_primary_process,
    record,
)

if TYPE_CHECKING:
    from ..store.cache import ArtifactCache
    from ..training.config import TrainConfig


@dataclass(frozen=True)
class SweepOptions(PairOptions):
    """Everything `svdlora sweep` takes; `train` set means a student per rank is trained."""

    ranks: tuple[int, ...] = (4, 8, 16, 32, 64)
    method: str = "auto"
    train: TrainConfig | None = None
    train_data: str | None = None
    eval_data: str | None = None


def run(
    options: SweepOptions, hooks: Hooks | None = None, cache: ArtifactCache | None = None
) -> Document | None:
    """sweep.json, sweep_energy.png and, with training, rank_study.png; the document."""
    from ..analysis.sweep import rank_sweep, train_rank_study
    from ..artifacts import write_sweep_outputs

    hooks = hooks or Hooks()
    if options.train is not None:
        options.train.validate()
    with extraction(options.output_dir, options.cache, cache) as c:
        with hooks.items("SVD") as update:
            result = rank_sweep(
                options.base_model,
                options.teacher_model,
                c,
                list(options.ranks),
                options.include,
                options.exclude,
                options.method,
                update,
                dtype_policy=options.dtype_policy,
            )
        study = None
        if options.train is not None:  # every rank trains (students may be distributed)
            study = train_rank_study(
                options.base_model,
                result,
                options.output_dir / "rank_study",
                options.train,
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
