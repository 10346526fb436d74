"""The batch schedule: which examples each optimizer step sees, fixed by the seed alone.

Two arms with the same seed, data, batch size and accumulation see identical
batches in identical order, whatever their init, so their curves compare.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..data import TokenizedSet
    from .config import TrainConfig


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


def _split_by_tokens(rows: list[int], lengths: Sequence[int], parts: int) -> list[tuple[int, ...]]:
    """Cut consecutive rows into at most `parts` micro-batches of about equal real tokens."""
    total = sum(lengths[i] for i in rows)
    micro: list[tuple[int, ...]] = []
    current: list[int] = []
    filled = 0
    for i in rows:
        current.append(i)
        filled += lengths[i]
        if len(micro) < parts - 1 and filled >= total * (len(micro) + 1) / parts:
            micro.append(tuple(current))
            current = []
    if current:
        micro.append(tuple(current))
    return micro


def token_schedule(
    lengths: Sequence[int],
    tokens_per_step: int,
    grad_accum: int,
    epochs: int,
    seed: int,
    max_steps: int | None = None,
) -> list[Step]:
    """Steps of about `tokens_per_step` real tokens each, in the seed's order.

    The same shuffle as `batch_schedule` (seed + epoch); rows are taken in that order
    until their real tokens reach the budget (a step holds at least one row), and each
    step is cut into up to `grad_accum` micro-batches of about equal tokens. It depends
    on the seed and the rows' lengths alone, so every arm sees identical batches.
    """
    steps: list[Step] = []
    for epoch in range(epochs):
        order = list(range(len(lengths)))
        random.Random(seed * 100_003 + epoch).shuffle(order)
        rows: list[int] = []
        filled = 0
        for position, i in enumerate(order):
            rows.append(i)
            filled += lengths[i]
            if filled >= tokens_per_step or position == len(order) - 1:
                steps.append(Step(epoch, tuple(_split_by_tokens(rows, lengths, grad_accum))))
                rows, filled = [], 0
                if max_steps is not None and len(steps) >= max_steps:
                    return steps
    return steps


def token_batches(lengths: Sequence[int], tokens: int) -> list[list[int]]:
    """Consecutive rows (evaluation order) in micro-batches of about `tokens` real tokens."""
    batches: list[list[int]] = []
    current: list[int] = []
    filled = 0
    for i, n in enumerate(lengths):
        if current and filled + n > tokens:
            batches.append(current)
            current, filled = [], 0
        current.append(i)
        filled += n
    if current:
        batches.append(current)
    return batches


def training_schedule(
    train: TokenizedSet, config: TrainConfig, epochs: int, max_steps: int | None
) -> list[Step]:
    """The seed's steps: `--batch-size` rows per micro-batch, or `--tokens-per-step`."""
    if config.tokens_per_step:
        lengths = [len(row) for row in train.input_ids]
        return token_schedule(
            lengths, config.tokens_per_step, config.grad_accum, epochs, config.seed, max_steps
        )
    return batch_schedule(
        len(train), config.batch_size, config.grad_accum, epochs, config.seed, max_steps
    )


def evaluation_batches(evaluation: TokenizedSet | None, config: TrainConfig) -> list[list[int]]:
    """The eval set's first `--eval-limit` rows in order, cut like training micro-batches."""
    if evaluation is None:
        return []
    n_eval = len(evaluation)
    if config.eval_limit is not None:
        n_eval = min(config.eval_limit, n_eval)
    if config.tokens_per_step:
        lengths = [len(row) for row in evaluation.input_ids[:n_eval]]
        return token_batches(lengths, max(1, config.tokens_per_step // config.grad_accum))
    return [
        list(range(i, min(i + config.batch_size, n_eval)))
        for i in range(0, n_eval, config.batch_size)
    ]
