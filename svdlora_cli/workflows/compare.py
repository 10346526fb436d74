"""The `compare` step: the arms' loss curves, the seed's table and, optionally, accuracy."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .common import (
    CacheOptions,
    Document,
    Hooks,
    extraction,
    is_primary_process,
)
from .flags import check, nested, option
from .vocabulary import BASE_MODEL, DEVICE, EVAL_DATA, GENERATE_LIMIT, OUTPUT_DIR, TEACHER_MODEL

if TYPE_CHECKING:
    from ..store.cache import ArtifactCache


@dataclass(frozen=True)
class CompareOptions:
    """Everything `svdlora compare` takes. Outputs go to `output_dir`, else the run folder,
    else the folder of the first log."""

    run_dir: Path | None = option(
        None,
        help="Folder with training_log_*.csv (searched two levels deep; default: "
        "--output-dir, with no --log).",
        argument=True,
    )
    log: tuple[Path, ...] = option((), help="Extra training log (repeatable).")
    target_loss: float | None = option(
        None, help="Loss to reach (default: 1.1 x the teacher's final loss)."
    )
    base_model: str | None = BASE_MODEL.field(None)
    teacher_model: str | None = TEACHER_MODEL.field(None)
    generate: bool = option(
        False, help="Greedy-decode the eval set for exact-match accuracy of each arm."
    )
    generate_limit: int = GENERATE_LIMIT.field(50, aliases=("--eval-limit",))
    eval_data: str | None = EVAL_DATA.field(None)
    max_new_tokens: int = option(256, help="Generation budget per eval problem.")
    device: str = DEVICE.field(
        "auto", help="Device that decodes for --generate: auto (a GPU if any), cpu, cuda, cuda:N."
    )
    log_y: bool = option(False, help="Log-scale loss axis in the plot.")
    output_dir: Path | None = OUTPUT_DIR.field(
        None, help="Folder for the comparison files (default: the run folder)."
    )
    cache: CacheOptions = nested(CacheOptions, "cache_size", factory=CacheOptions)

    @property
    def runs(self) -> Path | None:
        """The folder searched for logs: the run folder, else (no --log) --output-dir."""
        return self.run_dir if self.run_dir is not None or self.log else self.output_dir

    @property
    def folder(self) -> Path:
        if self.output_dir is not None:
            return self.output_dir
        return self.run_dir if self.run_dir is not None else Path(self.log[0]).parent

    def validate(self) -> None:
        check(
            self.runs is not None or bool(self.log),
            "no run folder given",
            "pass the folder `svdlora train` wrote to, or --log FILE (repeatable)",
        )
        check_generate_limit(self.generate_limit)
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


def check_generate_limit(limit: int) -> None:
    """--generate-limit (compare, demo): at least one problem."""
    check(
        limit >= 1,
        f"--generate-limit must be at least 1, got {limit}",
        "use e.g. --generate-limit 50",
    )


def run(
    options: CompareOptions, hooks: Hooks | None = None, cache: ArtifactCache | None = None
) -> Document | None:
    """comparison_random_vs_svd.png, comparison_report.txt/.md and comparison.json.

    Only the main comparable group of runs is compared, each run once (see
    `analysis.comparable.select_comparable`); `set_apart` and `warnings` say what was left out.

    Generated answers are cached by content, so a second `--generate` decodes nothing.
    """
    from ..analysis.accuracy import attach_accuracy
    from ..analysis.comparable import select_comparable
    from ..analysis.compare import (
        attach_model_figures,
        compare_selection,
        curves_for_plot,
        find_logs,
    )
    from ..analysis.teacher_budget import teacher_budget
    from ..artifacts import write_compare_outputs
    from .common import record

    hooks = hooks or Hooks()
    options.validate()
    # Only one comparable group of runs, each once; what is set apart is a warning.
    selection = select_comparable(find_logs(options.runs, options.log, options.teacher_model))
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
                    options.generate_limit,
                    options.max_new_tokens,
                    update,
                    c,
                    options.device,
                )
        if not is_primary_process():
            return None
        doc["teacher_budget"] = teacher_budget(doc)
        return write_compare_outputs(
            doc, curves_for_plot(runs), options.folder, options.log_y, record(options)
        )
