"""What an init's builder gets: `InitStart`. It stands apart from the registry
(init_registry.py) so that the builders the registry imports (data_inits.py) take it too.
Like the registry, it imports no ML stack."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..adapters.factors import LowRankFactors
    from ..data import TokenizedSet
    from .inits import LoraPlan


@dataclass(frozen=True)
class InitStart:
    """What a builder gets: the base model, the arm's PEFT config and plan, and what the
    init may read (the teacher's factors; the training rows and the init batches)."""

    base: Any
    peft_config: Any
    plan: LoraPlan
    seed: int
    factors: Mapping[str, LowRankFactors] | None = None
    train: TokenizedSet | None = None
    batches: Sequence[Sequence[int]] = ()  # the first INIT_BATCHES micro-batches (needs_data)
    pad_id: int = 0
