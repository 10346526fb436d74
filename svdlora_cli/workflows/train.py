"""The `train` step: LoRA students from random, SVD and control inits (seed plan steps 3-4)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .common import CacheOptions, Document, Hooks, cache_session, check

if TYPE_CHECKING:
    from ..cache import ArtifactCache
    from ..data import FieldNames
    from ..training.loop import TrainConfig


@dataclass(frozen=True)
class TrainOptions:
    """Everything `svdlora train` takes. One arm per (init, seed), all on identical batches."""

    base_model: str
    config: TrainConfig
    inits: tuple[str, ...] = ("random",)
    seeds: tuple[int, ...] = (0,)
    learning_rates: tuple[float, ...] = ()  # a grid; empty: config.learning_rate alone
    rank: int = 16
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ()
    svd_factors: str | None = None
    teacher_model: str | None = None
    train_data: str | None = None
    eval_data: str | None = None
    fields: FieldNames | None = None
    output_dir: Path = Path("svdlora-runs") / "training_results"
    reuse: bool = False
    cache: CacheOptions = field(default_factory=CacheOptions)

    def validate(self) -> None:

        check(self.rank >= 1, f"--rank must be at least 1, got {self.rank}", "use e.g. --rank 16")
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
        for lr in self.learning_rates:
            check(
                math.isfinite(lr) and lr > 0,
                f"--learning-rates must list positive finite numbers, got {lr}",
                "use e.g. --learning-rates 1e-4,3e-4,1e-3",
            )
        self.config.validate()

    @property
    def grid(self) -> tuple[float, ...]:
        """The learning rates to run: the grid, or the one learning rate."""
        return self.learning_rates or (self.config.learning_rate,)

    def run_name(self, init: str, learning_rate: float, seed: int) -> str:
        """`svd`, `svd_seed1`, `svd_lr0.0003` or `svd_lr0.0003_seed1`: unique per run."""
        name = f"{init}_lr{learning_rate:g}" if len(self.grid) > 1 else init
        return f"{name}_seed{seed}" if len(self.seeds) > 1 else name


def parse_learning_rates(text: str) -> tuple[float, ...]:
    """`1e-4,3e-4` -> (0.0001, 0.0003): distinct, positive, finite."""
    from ..errors import InvalidOptionError

    hint = "use e.g. --learning-rates 1e-4,3e-4,1e-3"
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InvalidOptionError(
            f"--learning-rates {text!r} is not a list of numbers", hint
        ) from None
    check(bool(values), "--learning-rates is empty", hint)
    check(len(set(values)) == len(values), f"--learning-rates {text!r} repeats a value", hint)
    for lr in values:
        check(
            math.isfinite(lr) and lr > 0,
            f"--learning-rates must list positive finite numbers, got {lr:g}",
            hint,
        )
    return values


def run(
    options: TrainOptions, hooks: Hooks | None = None, cache: ArtifactCache | None = None
) -> Document:
    """final_model_{arm}/ and training_log_{arm}.csv per arm; the summary document."""
    from ..data import FieldNames
    from ..files import check_writable_dir
    from ..training.inits import FACTOR_INITS
    from ..training.runs import throughput_line
    from ..training.shared import SharedSetup
    from ..training.student import base_plan, svd_factors_for, train_student

    hooks = hooks or Hooks()
    options.validate()
    folder = check_writable_dir(options.output_dir)
    factors = None
    if FACTOR_INITS & set(options.inits) or options.svd_factors:
        with cache_session(options.cache, cache) as c:
            factors = svd_factors_for(
                options.base_model,
                options.rank,
                c,
                options.svd_factors,
                options.teacher_model,
                options.target_modules,
            )
    # Every arm shares one plan (modules and ranks), so only the init differs.
    plan = base_plan(
        options.base_model, options.rank, options.lora_alpha, options.target_modules, factors
    )
    runs = [
        (seed, lr, init) for seed in options.seeds for lr in options.grid for init in options.inits
    ]
    arms = []
    # One base model, tokenizer and step-0 row per identical start for the whole grid.
    shared = SharedSetup(options.base_model, options.config.trust_remote_code)
    # Every run of one seed sees the same batches in the same order, whatever its init or lr.
    for seed, lr, init in runs:
        name = options.run_name(init, lr, seed)
        hooks.announce(f"train --init {init} --learning-rate {lr:g} --seed {seed}")
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
                    reuse=options.reuse,
                    memo=cache.memo if cache is not None else None,
                    shared=shared,
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
    }
