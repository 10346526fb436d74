"""The batch schedule: which examples each optimizer step sees, fixed by the seed alone.

Two arms with the same seed, data, batch size and accumulation see identical
batches in identical order, whatever their init, so their curves compare.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """One optimizer step: its epoch and its micro-batches of example indices."""

    epoch: int
    micro_batches: tuple[tuple[int, ...], ...]

    @property
    def indices(self) -> list[int]:
        return [i for batch in self.micro_batches for i in batch]


def batch_schedule(
    n_examples: int,
    batch_size: int,
    grad_accum: int,
    epochs: int,
    seed: int,
    max_steps: int | None = None,
) -> list[Step]:
    """Shuffle once per epoch (seed + epoch), cut into micro-batches, group them into steps."""
    steps: list[Step] = []
    for epoch in range(epochs):
        order = list(range(n_examples))
        random.Random(seed * 100_003 + epoch).shuffle(order)
        micro = [tuple(order[i : i + batch_size]) for i in range(0, n_examples, batch_size)]
        for i in range(0, len(micro), grad_accum):
            steps.append(Step(epoch, tuple(micro[i : i + grad_accum])))
            if max_steps is not None and len(steps) >= max_steps:
                return steps
    return steps
