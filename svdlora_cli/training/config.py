"""TrainConfig: the hyperparameters every arm of an experiment shares, and their checks."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import InvalidOptionError

PRECISIONS = ("no", "bf16", "fp16")
SCHEDULERS = ("linear", "cosine", "constant")


@dataclass
class TrainConfig:
    """Hyperparameters shared by every arm of an experiment."""

    epochs: int = 5
    learning_rate: float = 2e-4
    batch_size: int = 4
    tokens_per_step: int | None = None
    grad_accum: int = 1
    max_length: int = 512
    seed: int = 0
    eval_every: int = 0
    eval_limit: int | None = None
    max_steps: int | None = None
    precision: str = "no"
    gradient_checkpointing: bool = False
    device: str = "auto"
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    packing: bool = True
    trust_remote_code: bool = False
    save_every: int = 0
    resume: bool = False

    def validate(self) -> None:
        finite = math.isfinite
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (
                finite(self.learning_rate) and self.learning_rate > 0,
                f"--learning-rate must be a positive finite number, got {self.learning_rate}",
            ),
            (
                finite(self.weight_decay) and self.weight_decay >= 0,
                f"--weight-decay must be a finite number >= 0, got {self.weight_decay}",
            ),
            (
                finite(self.max_grad_norm) and self.max_grad_norm > 0,
                f"the gradient-norm clip must be positive and finite, got {self.max_grad_norm}",
            ),
            (self.max_length >= 2, f"--max-length must be at least 2, got {self.max_length}"),
            (self.warmup_steps >= 0, f"--warmup-steps must be >= 0, got {self.warmup_steps}"),
            (self.eval_limit is None or self.eval_limit >= 1, "--eval-limit must be at least 1"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (
                self.tokens_per_step is None or self.tokens_per_step >= 1,
                f"--tokens-per-step must be at least 1, got {self.tokens_per_step}",
            ),
            (self.grad_accum >= 1, f"--grad-accum must be at least 1, got {self.grad_accum}"),
            (self.eval_every >= 0, f"--eval-every must be >= 0, got {self.eval_every}"),
            (self.save_every >= 0, f"--save-every must be >= 0, got {self.save_every}"),
            (self.max_steps is None or self.max_steps >= 1, "--max-steps must be at least 1"),
            (self.precision in PRECISIONS, f"unknown precision {self.precision!r}"),
            (self.lr_scheduler in SCHEDULERS, f"unknown --lr-scheduler {self.lr_scheduler!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidOptionError(message, "see `svdlora train --help` for valid values")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def result_settings(self) -> dict[str, Any]:
        """The settings that shape the result (not how it is checkpointed or resumed)."""
        return {k: v for k, v in asdict(self).items() if k not in ("save_every", "resume")}
