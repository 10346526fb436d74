"""Curve figures on synthetic series with known answers."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from svdlora_cli.analysis.curve_stats import (
    area_under_curve,
    gap_recovered,
    improvement,
    oscillation,
    relative_gap,
    spread,
    steps_to_target,
    value_at_step,
)


def test_steps_to_target_and_never_reached():
    steps, losses = [0, 1, 2, 3, 4], [2.0, 1.5, 1.2, 0.9, 1.0]
    assert steps_to_target(steps, losses, 1.2) == 2
    assert steps_to_target(steps, losses, 0.95) == 3
    assert steps_to_target(steps, losses, 0.5) is None
    assert value_at_step(steps, [0, 10, 20, 30, 40], 3) == 30
    assert value_at_step(steps, [0, 10, 20, 30, 40], None) is None


def test_auc_is_the_trapezoid_area():
    assert area_under_curve([0, 1, 2], [2.0, 1.0, 1.0]) == pytest.approx(1.5 + 1.0)
    assert area_under_curve([0, 2, 4], [1.0, 1.0, 1.0]) == pytest.approx(4.0)


def test_oscillation_is_std_of_second_half_differences():
    losses = [5, 4, 3, 2, 1.0, 1.5, 1.0, 1.5]
    diffs = [0.5, -0.5, 0.5]
    mean = sum(diffs) / 3
    expected = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert oscillation(losses) == pytest.approx(expected)
    assert oscillation([1.0, 0.9]) is None


def test_gaps_and_improvements():
    assert relative_gap(0.38, 0.35) == pytest.approx(100 * 0.03 / 0.35)
    assert improvement(0.38, 0.42) == pytest.approx(100 * 0.04 / 0.42)
    assert gap_recovered(1.5, 2.0, 1.0) == pytest.approx(0.5)
    assert gap_recovered(1.5, 1.0, 1.0) is None


def test_spread_matches_scipy_t_interval():
    values = [1.0, 1.2, 0.9, 1.1]
    s = spread(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=s.mean, scale=stats.sem(values))
    assert (s.mean, s.n) == (pytest.approx(1.05), 4)
    assert (s.ci_low, s.ci_high) == (pytest.approx(low), pytest.approx(high))
    single = spread([2.0, None])
    assert (single.mean, single.std, single.n) == (2.0, None, 1)
    assert spread([None]).mean is None
