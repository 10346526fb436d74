"""What the teacher's run and every student's share once their model is built: train it on
the prepared data, then gather its trained weights on every process and check them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..adapters.factors import require_finite
from ..data import Datasets
from .accelerator import gathered_state_dict
from .config import TrainConfig
from .loop import FitResult, StepProgress, fit

DIVERGED = "training diverged: lower --learning-rate (or use --warmup-steps)"


@dataclass(frozen=True)
class ArmRun:
    """One run's inputs besides its model: the tokenizer, the prepared data, the
    hyperparameters, the accelerator, the progress hook and the output folder."""

    tokenizer: Any
    data: Datasets
    config: TrainConfig
    accelerator: Any
    progress: StepProgress | None
    output_dir: Path

    def fit(
        self, model: Any, name: str, weights: str, trainable_only: bool = False, **options: Any
    ) -> tuple[FitResult, dict[str, Any] | None]:
        """`fit` the model (its checkpoints under checkpoints/`name`; `options` go to `fit`),
        then gather the trained weights on every process (`gathered_state_dict`: None where
        `save_pretrained` reads the model itself) and check them finite on the main one,
        where the error names them `weights`. `trainable_only`: the adapters, not the base."""
        accelerator = self.accelerator
        result = fit(
            model,
            self.data.train,
            self.data.evaluation,
            self.config,
            self.tokenizer.pad_token_id,
            accelerator,
            self.progress,
            checkpoint_dir=Path(self.output_dir) / "checkpoints" / name,
            **options,
        )
        accelerator.wait_for_everyone()
        state_dict = gathered_state_dict(accelerator, model, trainable_only=trainable_only)
        if accelerator.is_main_process:
            require_finite(
                state_dict
                if state_dict is not None
                else {
                    n: p
                    for n, p in model.named_parameters()
                    if p.requires_grad or not trainable_only
                },
                weights,
                DIVERGED,
            )
        return result, state_dict
