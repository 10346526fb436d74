"""The `train-teacher` step: full-parameter SFT of the base model (step 1 of the seed plan)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..data import FieldNames
from ..training.config import TrainConfig
from .common import CacheOptions, Document, Hooks, cache_session, is_primary_process
from .flags import nested
from .vocabulary import (
    BASE_MODEL,
    EVAL_DATA,
    FIELD_NAMES,
    OUTPUT_DIR,
    SAVE_STEPS,
    TRAIN_DATA,
    TRAINING,
)

if TYPE_CHECKING:
    from ..store.cache import ArtifactCache


@dataclass(frozen=True)
class TeacherOptions:
    """Everything `svdlora train-teacher` takes.

    `workspace`: the svdlora.toml to record base and teacher in (None: none). `reuse`: return
    a finished run with the same inputs instead of training again (the demo reuses).
    `save_steps`: keep the full weights after these optimizer steps (checkpoints/step_K/);
    they do not change the result, so they are no part of the run's key.
    """

    base_model: str = BASE_MODEL.field()
    config: TrainConfig = TRAINING.but(learning_rate=2e-5).field()
    train_data: str | None = TRAIN_DATA.field(None)
    eval_data: str | None = EVAL_DATA.field(None)
    fields: FieldNames | None = FIELD_NAMES.field(factory=FieldNames)
    output_dir: Path = OUTPUT_DIR.field(
        Path("svdlora-runs") / "teacher", help="Run folder (default: ./svdlora-runs/teacher)."
    )
    save_steps: tuple[int, ...] = SAVE_STEPS.field(())
    workspace: Path | None = None
    reuse: bool = False
    cache: CacheOptions = nested(CacheOptions, "cache_size", "no_cache", factory=CacheOptions)


def run(
    options: TeacherOptions, hooks: Hooks | None = None, cache: ArtifactCache | None = None
) -> Document:
    """final_model/, training_log_teacher.csv and the run record; the summary document."""
    from ..errors import ConfigError
    from ..files import check_writable_dir
    from ..output_sets import TRAINING_HINT, locked_output
    from ..training.records import throughput_line
    from ..training.teacher import train_teacher
    from ..workspace import update_workspace

    hooks = hooks or Hooks()
    options.config.validate()
    folder = check_writable_dir(options.output_dir)
    # The cache memoises the file digests that the run's content key needs; the folder is
    # locked as `train` and `svd` lock theirs, so two teachers never write into one.
    with (
        locked_output(folder, is_primary_process(), TRAINING_HINT),
        cache_session(options.cache, cache) as shared,
        hooks.steps("teacher") as update,
    ):
        summary = train_teacher(
            options.base_model,
            folder,
            options.config,
            options.train_data,
            options.eval_data,
            options.fields or FieldNames(),
            update,
            reuse=options.reuse,
            memo=shared.memo,
            save_steps=options.save_steps,
        )
    hooks.announce(throughput_line(summary))
    doc: Document = {
        "arms": [summary],
        "config": options.config.to_dict(),
        "output_dir": str(folder),
    }
    if options.workspace is not None and summary["artifacts"] and is_primary_process():
        try:
            update_workspace(
                options.workspace,
                {
                    "base_model": options.base_model,
                    "teacher_model": summary["artifacts"]["final_model"],
                    "train_data": options.train_data,
                    "eval_data": options.eval_data,
                },
            )
            doc["workspace"] = str(options.workspace.resolve())
        except ConfigError as exc:  # the teacher is trained and saved: say so, don't fail
            doc["warnings"] = [f"{exc.message}; {exc.hint}"]
    return doc
