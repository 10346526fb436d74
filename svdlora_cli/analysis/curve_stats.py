"""Figures of one loss curve, and mean / std / 95% CI over seeds. Pure functions, no I/O."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def steps_to_target(steps: Sequence[int], losses: Sequence[float], target: float) -> int | None:
    """First logged step whose loss is at or below `target`; None when never reached."""
    return next((s for s, loss in zip(steps, losses, strict=True) if loss <= target), None)


def value_at_step(steps: Sequence[int], values: Sequence[float], step: int | None) -> float | None:
    """The value logged at `step` (e.g. tokens seen when the target was reached)."""
    if step is None:
        return None
    return next((v for s, v in zip(steps, values, strict=True) if s == step), None)


def area_under_curve(steps: Sequence[int], losses: Sequence[float]) -> float:
    """Trapezoidal area under loss(step); lower means faster learning for the same budget."""
    return sum(
        (steps[i + 1] - steps[i]) * (losses[i] + losses[i + 1]) / 2 for i in range(len(steps) - 1)
    )


def oscillation(losses: Sequence[float]) -> float | None:
    """Std of step-to-step loss changes over the second half of training."""
    half = list(losses[len(losses) // 2 :])
    diffs = [b - a for a, b in itertools.pairwise(half)]
    return statistics.stdev(diffs) if len(diffs) >= 2 else None


def relative_gap(value: float | None, reference: float | None) -> float | None:
    """(value - reference) / reference in percent: the gap to the teacher."""
    if value is None or reference is None or reference == 0:
        return None
    return 100.0 * (value - reference) / reference


def improvement(value: float | None, baseline: float | None) -> float | None:
    """(baseline - value) / baseline in percent: how far below `random` (positive is better)."""
    if value is None or baseline is None or baseline == 0:
        return None
    return 100.0 * (baseline - value) / baseline


def gap_recovered(arm: float | None, base: float | None, teacher: float | None) -> float | None:
    """(L_base - L_arm) / (L_base - L_teacher): the share of the base-to-teacher loss gap closed."""
    if arm is None or base is None or teacher is None or base == teacher:
        return None
    return (base - arm) / (base - teacher)


@dataclass(frozen=True)
class Spread:
    """Mean, sample std and the 95% confidence interval of the mean (Student t)."""

    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None
    n: int


def spread(values: Sequence[float | None]) -> Spread:
    """Aggregate over seeds; None values (e.g. 'never reached') are left out and counted."""
    known = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not known:
        return Spread(None, None, None, None, 0)
    mean = statistics.fmean(known)
    if len(known) == 1:
        return Spread(mean, None, None, None, 1)
    from scipy import stats

    std = statistics.stdev(known)
    half = stats.t.ppf(0.975, len(known) - 1) * std / math.sqrt(len(known))
    return Spread(mean, std, mean - half, mean + half, len(known))
