"""The `train` step: LoRA students from random, SVD and control inits (seed plan steps 3-4)."""

from __future__ import annotations

import dataclasses
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
        import math

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
        self.config.validate()


def run(
    options: TrainOptions, hooks: Hooks | None = None, cache: ArtifactCache | None = None
) -> Document:
    """final_model_{arm}/ and training_log_{arm}.csv per arm; the summary document."""
    from ..data import FieldNames
    from ..files import check_writable_dir
    from ..training.inits import FACTOR_INITS
    from ..training.student import arm_name, base_plan, svd_factors_for, train_student

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
    several = len(options.seeds) > 1
    count = len(options.seeds) * len(options.inits)
    arms = []
    for seed in options.seeds:
        for init in options.inits:
            name = arm_name(init, seed, several)
            hooks.announce(f"train --init {init} --seed {seed} ({len(arms) + 1}/{count})")
            with hooks.steps(name) as update:
                arms.append(
                    train_student(
                        options.base_model,
                        init,
                        folder,
                        dataclasses.replace(options.config, seed=seed),
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
                    )
                )
    return {
        "arms": arms,
        "plan": {
            "lora_rank": plan.rank,
            "lora_alpha": plan.alpha,
            "modules": len(plan.ranks),
            "ranks": plan.ranks,
        },
        "config": options.config.to_dict(),
        "output_dir": str(folder),
    }
