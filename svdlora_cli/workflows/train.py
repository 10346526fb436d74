"""The `train` step: LoRA students from random, SVD and control inits (seed plan steps 3-4)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..data import FieldNames
from ..output_sets import TRAINING_HINT, locked_output
from ..training.config import TrainConfig
from ..training.init_registry import REFERENCE_INIT
from .common import CacheOptions, Document, Hooks, cache_session, is_primary_process
from .flags import check, nested, option
from .vocabulary import (
    BASE_MODEL,
    EVAL_DATA,
    FIELD_NAMES,
    INCLUDE,
    INIT,
    LEARNING_RATES,
    OUTPUT_DIR,
    RANK,
    SEEDS,
    TEACHER_MODEL,
    TRAIN_DATA,
    TRAINING,
    check_learning_rate,
    check_rank,
)

if TYPE_CHECKING:
    from ..store.cache import ArtifactCache


@dataclass(frozen=True)
class TrainOptions:
    """Everything `svdlora train` takes. One arm per (init, seed), all on identical batches."""

    base_model: str = BASE_MODEL.field()
    config: TrainConfig = TRAINING.but("seed").field()  # the seed: each run's from --seeds
    inits: tuple[str, ...] = INIT.field((REFERENCE_INIT,))
    seeds: tuple[int, ...] = SEEDS.field((0,), help="One run per seed, e.g. 0,1,2 (default: 0).")
    # a grid; empty: config.learning_rate alone
    learning_rates: tuple[float, ...] = LEARNING_RATES.field(())
    rank: int = RANK.field(16)
    lora_alpha: float | None = option(None, help="LoRA alpha (default: r).")
    lora_dropout: float = option(0.0, help="LoRA dropout.")
    include: tuple[str, ...] = INCLUDE.field(
        (),
        help="Regex of tensor names to target (repeatable; default: svd's targets).",
        aliases=("--target-modules",),
    )
    svd_factors: str | None = option(None, help="svd_factors_rank*.safetensors from `svdlora svd`.")
    teacher_model: str | None = TEACHER_MODEL.field(None)
    train_data: str | None = TRAIN_DATA.field(None)
    eval_data: str | None = EVAL_DATA.field(None)
    fields: FieldNames | None = FIELD_NAMES.field(factory=FieldNames)
    output_dir: Path = OUTPUT_DIR.field(
        Path("svdlora-runs") / "training_results",
        help="Folder (default: ./svdlora-runs/training_results).",
    )
    reuse: bool = False
    allow_other_base: bool = option(  # --svd-factors made from another base's weights
        False,
        help="Use --svd-factors made from another base of the same shapes (a warning, not "
        "an error).",
    )
    cache: CacheOptions = nested(CacheOptions, factory=CacheOptions)

    def validate(self) -> None:

        check_rank(self.rank)
        check(
            self.lora_alpha is None or (math.isfinite(self.lora_alpha) and self.lora_alpha > 0),
            f"--lora-alpha must be a positive finite number, got {self.lora_alpha}",
            "leave it out (alpha = r) or use e.g. --lora-alpha 16",
        )
        check(
            math.isfinite(self.lora_dropout) and 0.0 <= self.lora_dropout < 1.0,
            f"--lora-dropout must be in [0, 1), got {self.lora_dropout}",
            "use e.g. --lora-dropout 0.05",
        )
        check(bool(self.seeds), "no seed given", "use e.g. --seeds 0,1,2")
        from ..training.init_registry import get_init

        for init in self.inits:
            get_init(init)  # registered, or an error that lists the registered inits
        for lr in self.learning_rates:
            check_learning_rate(lr)
        check(
            len(self.grid) < 2 or self.has_eval_set,
            f"a learning-rate grid ({len(self.grid)} rates) needs eval rows to choose among "
            f"them, but --train-data {self.train_data} comes without --eval-data",
            "pass --eval-data FILE with held-out rows (or a single --learning-rates value)",
        )
        self.config.validate()
        self.check_run_names()

    @property
    def has_eval_set(self) -> bool:
        """Whether the runs get eval rows: --eval-data, or the built-in set's own."""
        return bool(self.eval_data) or self.train_data in (None, "builtin")

    @property
    def grid(self) -> tuple[float, ...]:
        """The learning rates to run: the grid, or the one learning rate."""
        return self.learning_rates or (self.config.learning_rate,)

    def run_name(self, init: str, learning_rate: float, seed: int) -> str:
        """`svd`, `svd_seed1`, `svd_lr0.0003` or `svd_lr0.0003_seed1`: unique per run.
        `init` may be an arm label: `svd@5_lr0.0003` reads the teacher after step 5."""
        name = f"{init}_lr{learning_rate_text(learning_rate)}" if len(self.grid) > 1 else init
        return f"{name}_seed{seed}" if len(self.seeds) > 1 else name

    def check_run_names(self) -> None:
        """Refuse a grid in which two runs would share a name (and so one folder and log)."""
        seen: dict[str, tuple[str, float, int]] = {}
        for seed in self.seeds:
            for lr in self.grid:
                for init in self.inits:
                    name = self.run_name(init, lr, seed)
                    if name in seen:
                        check(
                            False,
                            f"two runs of the grid would both be named {name!r}: "
                            f"{_setting(*seen[name])} and {_setting(init, lr, seed)}",
                            "list each --init, --learning-rates and --seeds value once",
                        )
                    seen[name] = (init, lr, seed)


def check_one_learning_rate(rate_given: bool, grid_given: bool) -> None:
    """--learning-rate and --learning-rates both given (on the command line, in the
    environment or in svdlora.toml): refused, since the grid would silently replace it."""
    check(
        not (rate_given and grid_given),
        "--learning-rate and --learning-rates are both given, and the grid would replace "
        "the single rate",
        "pass one of them: --learning-rates 1e-4,3e-4 for a grid (a single value is one "
        "run), or --learning-rate 1e-4 alone",
    )


def learning_rate_text(learning_rate: float) -> str:
    """The learning rate as run names spell it: `%g` where that is exact (1e-4 -> 0.0001,
    3e-5 -> 3e-05), else the shortest text that reads back as the same float, so two
    distinct rates never share a name (1.0000001e-4 -> 0.00010000001)."""
    short = f"{learning_rate:g}"
    return short if float(short) == learning_rate else repr(float(learning_rate))


def _setting(init: str, learning_rate: float, seed: int) -> str:
    return f"--init {init} --learning-rate {learning_rate_text(learning_rate)} --seed {seed}"


def run(
    options: TrainOptions, hooks: Hooks | None = None, cache: ArtifactCache | None = None
) -> Document:
    """final_model_{arm}/ and training_log_{arm}.csv per arm; the summary document.

    The output folder is locked while the grid trains, so a second `train` into it is
    refused instead of overwriting this one's runs. With --resume, finished runs with the
    same inputs are kept and the interrupted one continues from its checkpoint.
    """
    from ..files import check_writable_dir

    options.validate()
    folder = check_writable_dir(options.output_dir)
    with (
        locked_output(folder, is_primary_process(), TRAINING_HINT),
        cache_session(options.cache, cache) as shared,
    ):
        return _train_grid(options, hooks or Hooks(), shared, folder)


def _train_grid(
    options: TrainOptions, hooks: Hooks, cache: ArtifactCache, folder: Path
) -> Document:
    from ..data import FieldNames
    from ..training.init_registry import init_names
    from ..training.inits import clamp_warnings
    from ..training.records import throughput_line
    from ..training.shared import SharedSetup
    from ..training.student import base_plan, svd_factors_for, train_student
    from ..training.teacher_checkpoints import checkpoint_label, factors_teacher

    factors = None
    warnings: list[str] = []
    if set(init_names(needs_teacher=True)) & set(options.inits) or options.svd_factors:
        with cache_session(options.cache, cache) as c:
            factors = svd_factors_for(
                options.base_model,
                options.rank,
                c,
                options.svd_factors,
                options.teacher_model,
                options.include,
                allow_other_base=options.allow_other_base,
                warnings=warnings,
            )
    # The teacher checkpoint the factors came from: its SVD arms are svd@<step> unless final.
    teacher, notes = (
        factors_teacher(options.svd_factors, options.teacher_model, cache.memo)
        if factors is not None
        else (None, [])
    )
    warnings += notes
    # Every arm shares one plan (modules and ranks), so only the init differs.
    plan = base_plan(options.base_model, options.rank, options.lora_alpha, options.include, factors)
    warnings = list(dict.fromkeys([*warnings, *clamp_warnings(plan)]))  # svd's, once each
    runs = [
        (seed, lr, init) for seed in options.seeds for lr in options.grid for init in options.inits
    ]
    arms = []
    # One base model, tokenizer and step-0 row per identical start for the whole grid.
    shared = SharedSetup(options.base_model, options.config.trust_remote_code)
    # Every run records its content key, so that --resume keeps the runs that finished
    # before an interruption; the file digests it needs are memoised (in the cache index,
    # or for this process when the cache is off).
    memo = cache.memo if cache.memo is not None else {}
    # Every run of one seed sees the same batches in the same order, whatever its init or lr.
    for seed, lr, init in runs:
        name = options.run_name(checkpoint_label(init, teacher), lr, seed)
        hooks.announce(f"train {_setting(init, lr, seed)}")
        with hooks.steps(f"{name} ({len(arms) + 1}/{len(runs)})") as update:
            arms.append(
                train_student(
                    options.base_model,
                    init,
                    folder,
                    dataclasses.replace(options.config, seed=seed, learning_rate=lr),
                    plan,
                    factors,
                    name,
                    options.train_data,
                    options.eval_data,
                    options.fields or FieldNames(),
                    options.lora_dropout,
                    update,
                    reuse=options.reuse or options.config.resume,
                    memo=memo,
                    shared=shared,
                    teacher=teacher,
                )
            )
        hooks.announce(throughput_line(arms[-1]))
    return {
        "arms": arms,
        "plan": {
            "lora_rank": plan.rank,
            "lora_alpha": plan.alpha,
            "modules": len(plan.ranks),
            "ranks": plan.ranks,
        },
        "config": options.config.to_dict(),
        "grid": {
            "inits": list(options.inits),
            "learning_rates": list(options.grid),
            "seeds": list(options.seeds),
        },
        "output_dir": str(folder),
        "base_loads": shared.loads,
        "warnings": warnings,
    }
