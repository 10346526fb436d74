"""The `compare` step: the arms' loss curves, the seed's table and, optionally, accuracy."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .common import (
    CacheOptions,
    Document,
    Hooks,
    check,
    extraction,
    is_primary_process,
)

if TYPE_CHECKING:
    from ..store.cache import ArtifactCache


@dataclass(frozen=True)
class CompareOptions:
    """Everything `svdlora compare` takes. Outputs go to `output_dir`, else the run folder,
    else the folder of the first log."""

    run_dir: Path | None = None
    logs: tuple[Path, ...] = ()
    target_loss: float | None = None
    base_model: str | None = None
    teacher_model: str | None = None
    generate: bool = False
    eval_limit: int = 50
    eval_data: str | None = None
    max_new_tokens: int = 256
    log_y: bool = False
    output_dir: Path | None = None
    cache: CacheOptions = field(default_factory=CacheOptions)

    @property
    def folder(self) -> Path:
        if self.output_dir is not None:
            return self.output_dir
        return self.run_dir if self.run_dir is not None else Path(self.logs[0]).parent

    def validate(self) -> None:
        check(
            self.run_dir is not None or bool(self.logs),
            "no run folder given",
            "pass the folder `svdlora train` wrote to, or --log FILE (repeatable)",
        )
        check(
            self.eval_limit >= 1,
            f"--eval-limit must be at least 1, got {self.eval_limit}",
            "use e.g. --eval-limit 50",
        )
        check(
            self.max_new_tokens >= 1,
            f"--max-new-tokens must be at least 1, got {self.max_new_tokens}",
            "use e.g. --max-new-tokens 256",
        )
        check(
            self.target_loss is None or (math.isfinite(self.target_loss) and self.target_loss > 0),
            f"--target-loss must be a positive finite number, got {self.target_loss}",
            "leave it out (1.1 x the teacher's final loss) or use e.g. --target-loss 0.5",
        )


def run(
    options: CompareOptions, hooks: Hooks | None = None, cache: ArtifactCache | None = None
) -> Document | None:
    """comparison_random_vs_svd.png, comparison_report.txt/.md and comparison.json.

    Only the main comparable group of runs is compared, each run once (see
    `analysis.protocol.select_comparable`); `set_apart` and `warnings` say what was left out.

    Generated answers are cached by content, so a second `--generate` decodes nothing.
    """
    from ..analysis.accuracy import attach_accuracy
    from ..analysis.compare import (
        attach_model_figures,
        compare_selection,
        curves_for_plot,
        find_logs,
    )
    from ..analysis.protocol import select_comparable
    from ..artifacts import write_compare_outputs
    from .common import record

    hooks = hooks or Hooks()
    options.validate()
    # Only one comparable group of runs, each once; what is set apart is a warning.
    selection = select_comparable(find_logs(options.run_dir, options.logs, options.teacher_model))
    runs = selection.runs
    doc = compare_selection(selection, options.target_loss)
    teacher_dir = options.teacher_model or next(
        (str(r.model_dir) for r in runs if r.is_teacher and r.model_dir), None
    )
    base = options.base_model or next(
        (r.record.get("base_model") for r in runs if r.record.get("base_model")), None
    )
    check(
        base is not None or not options.generate,
        "--generate needs the base model",
        "pass --base-model",
    )
    with extraction(options.folder, options.cache, cache) as c:
        doc["warnings"] += attach_model_figures(doc, runs, base, teacher_dir, c)
        if options.generate:
            with hooks.items("generate") as update:
                attach_accuracy(
                    doc,
                    runs,
                    str(base),
                    teacher_dir,
                    options.eval_data,
                    options.eval_limit,
                    options.max_new_tokens,
                    update,
                    c,
                )
        if not is_primary_process():
            return None
        return write_compare_outputs(
            doc, curves_for_plot(runs), options.folder, options.log_y, record(options)
        )
