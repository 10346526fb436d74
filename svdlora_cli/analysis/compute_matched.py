"""Compute accounting and the compute-matched comparison: what does the teacher buy?

A run's FLOPs have three parts, read from its run record's summary: `training` (its
training FLOPs, flops.py), `init` (its init's FLOPs, training/init_cost.py) and `teacher`
(the teacher's training FLOPs up to the checkpoint whose dW an SVD init used). An init
whose record needs no teacher has teacher = 0, and one whose cost kind is "none" has
init = 0; a part that is not recorded (runs from before compute accounting) is None, and
so is the total: never a silent 0.

The compute-matched verdict puts each run's eval loss against its total FLOPs, teacher +
init + the cumulative training FLOPs of the eval row. For the focus init against every
other init, each at the learning rate the protocol chose, paired by seed: the matched
budget F* is the smaller of the two runs' final totals (at their last eval rows), and each
run's eval loss at F* is interpolated linearly in FLOPs between its eval points. A pair
whose F* lies before a run's first eval point (its teacher and init alone cost more than
the other run's whole training) is not matched; it reports the cheaper run's final eval
loss against the costlier run's step-0 eval loss, with their FLOPs, instead. The verdict
is the protocol's: the mean paired difference (focus - other) and its 95% CI (Student t),
better or worse only when the interval excludes 0.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from ..training.init_registry import INITS
from .curve_stats import spread
from .protocol import against_focus, verdict_word

PARTS = ("training", "init", "teacher")
BASIS = (
    "eval loss against total FLOPs (teacher + init + cumulative training FLOPs at each eval "
    "row); per seed, the focus init and the other init at their chosen learning rates are "
    "compared at the matched budget F* = the smaller of the two runs' final total FLOPs, each "
    "run's eval loss at F* interpolated linearly in FLOPs between its eval points; a pair is "
    "not matched when F* lies before a run's first eval point (its teacher and init alone "
    "cost more than the other run's whole training); verdict: the mean paired difference "
    "(focus - other) and its 95% CI (Student t), better / worse only when it excludes 0"
)


def _number(value: Any) -> float | None:
    if isinstance(value, Mapping):
        value = value.get("total")
    return float(value) if isinstance(value, (int, float)) else None


def run_flops(run: Any) -> dict[str, float | None]:
    """{training, init, teacher, total} FLOPs of one run (a `compare.RunLog`)."""
    summary = run.record.get("summary")
    summary = summary if isinstance(summary, Mapping) else {}
    init = run.record.get("init", run.arm)
    method = INITS.get(init)
    training = _number(summary.get("training_flops"))
    if training is None:
        training = run.rows[-1].flops
    parts: dict[str, float | None] = {"training": training}
    if run.is_teacher:
        parts.update(init=0.0, teacher=0.0)
    else:
        recorded = _number(summary.get("init_flops"))
        free = method is not None and method.cost == "none"
        parts["init"] = recorded if recorded is not None else (0.0 if free else None)
        recorded = _number(summary.get("teacher_flops"))
        needs = method is None or method.needs_teacher
        parts["teacher"] = recorded if recorded is not None or needs else 0.0
    known = [parts[p] for p in PARTS]
    parts["total"] = None if None in known else sum(v for v in known if v is not None)
    return parts


def arm_flops(per_run: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """Each part's mean over an arm's runs; None when any run lacks it."""
    out: dict[str, float | None] = {}
    for part in (*PARTS, "total"):
        values = [r.get(part) for r in per_run]
        known = [v for v in values if v is not None]
        out[part] = statistics.fmean(known) if known and len(known) == len(values) else None
    return out


def flops_warnings(arms: Sequence[Mapping[str, Any]]) -> list[str]:
    """Student arms whose total FLOPs are unknown, naming the parts that are missing."""
    notes = []
    for arm in arms:
        flops = arm.get("flops") or {}
        if arm["arm"] == "teacher" or flops.get("total") is not None:
            continue
        missing = [p for p in PARTS if flops.get(p) is None]
        notes.append(
            f"{arm['arm']}: total FLOPs unknown (no {', no '.join(missing)} FLOPs recorded in "
            "some of its runs: trained before compute accounting, or the teacher's FLOPs are "
            "not known); it is left out of the compute-matched verdicts"
        )
    return notes


def curve(run: Any, flops: Mapping[str, float | None]) -> list[tuple[float, float]] | None:
    """(total FLOPs, eval loss) at each eval row; None when any FLOPs figure is unknown."""
    overhead = [flops.get("teacher"), flops.get("init")]
    points = []
    for row in run.rows:
        if row.eval_loss is None:
            continue
        if row.flops is None or None in overhead:
            return None
        points.append((sum(v for v in overhead if v is not None) + row.flops, row.eval_loss))
    return sorted(points) if points else None


def loss_at(points: Sequence[tuple[float, float]], budget: float) -> float | None:
    """Eval loss at `budget` FLOPs, linear in FLOPs between eval points; None outside them."""
    if not points or budget < points[0][0] or budget > points[-1][0]:
        return None
    for (f0, l0), (f1, l1) in itertools.pairwise(points):
        if f0 <= budget <= f1:
            return l1 if f1 == f0 else l0 + (l1 - l0) * (budget - f0) / (f1 - f0)
    return points[-1][1]


def _flops(value: float) -> str:
    return f"{value:.3g}"


def match_pair(
    focus: tuple[str, list[tuple[float, float]]], other: tuple[str, list[tuple[float, float]]]
) -> dict[str, Any]:
    """One seed's pair, each (init, curve): the matched budget and both losses there, or
    why it is not matched and the honest substitute figures."""
    (a_name, a), (b_name, b) = focus, other
    budget = min(a[-1][0], b[-1][0])
    pair: dict[str, Any] = {
        "focus_flops": a[-1][0],
        "other_flops": b[-1][0],
        "budget": budget,
        "focus_eval_loss": loss_at(a, budget),
        "other_eval_loss": loss_at(b, budget),
    }
    if pair["focus_eval_loss"] is not None and pair["other_eval_loss"] is not None:
        pair.update(matched=True, difference=pair["focus_eval_loss"] - pair["other_eval_loss"])
        return pair
    (cheap_name, cheap), (dear_name, dear) = sorted(
        [(a_name, a), (b_name, b)], key=lambda item: item[1][-1][0]
    )
    ratio = dear[0][0] / cheap[-1][0] if cheap[-1][0] > 0 else None
    pair.update(
        matched=False,
        difference=None,
        focus_eval_loss=None,
        other_eval_loss=None,
        cheaper=cheap_name,
        cheaper_final_eval_loss=cheap[-1][1],
        cheaper_final_flops=cheap[-1][0],
        costlier=dear_name,
        costlier_initial_eval_loss=dear[0][1],
        costlier_start_flops=dear[0][0],
        start_ratio=ratio,
        why=(
            f"{dear_name}'s teacher and init alone ({_flops(dear[0][0])} FLOPs) cost more than "
            f"{cheap_name}'s whole run ({_flops(cheap[-1][0])} FLOPs)"
            + (f": {ratio:.3g}x" if ratio is not None else "")
        ),
    )
    return pair


def _runs_of(arm: Mapping[str, Any], logs: Mapping[str, Any]) -> dict[Any, Any]:
    """seed -> (run figures, RunLog) of an arm's runs."""
    return {r["seed"]: (r, logs.get(r["log"])) for r in arm["runs"]}


def _compare(
    focus: str, init: str, mine: Mapping[str, Any], theirs: Mapping[str, Any], logs: Any
) -> dict[str, Any]:
    """The compute-matched pairs of two chosen arms and their verdict."""
    pairs, unknown = [], []
    ours, other = _runs_of(mine, logs), _runs_of(theirs, logs)
    for seed in [s for s in ours if s in other]:
        (a_doc, a_run), (b_doc, b_run) = ours[seed], other[seed]
        a = curve(a_run, a_doc["flops"]) if a_run is not None else None
        b = curve(b_run, b_doc["flops"]) if b_run is not None else None
        if a is None or b is None:
            unknown.append(seed)
            continue
        pairs.append({"seed": seed, **match_pair((focus, a), (init, b))})
    matched = [p["difference"] for p in pairs if p["matched"]]
    s = spread(matched)

    def mean(key: str, only_matched: bool = False) -> float | None:
        values = [p[key] for p in pairs if p["matched"] or not only_matched]
        return statistics.fmean(values) if values else None

    row: dict[str, Any] = {
        "focus_flops": mean("focus_flops"),
        "other_flops": mean("other_flops"),
        "budget": mean("budget", only_matched=True),
        "focus_eval_loss": mean("focus_eval_loss", only_matched=True),
        "other_eval_loss": mean("other_eval_loss", only_matched=True),
        "pairs": pairs,
        "mean_difference": s.mean,
        "ci_low": s.ci_low,
        "ci_high": s.ci_high,
        "seeds": s.n,
        "unknown_seeds": unknown,
    }
    if matched:
        row["verdict"] = verdict_word(s.ci_low, s.ci_high)
    elif pairs:
        ratios = [p["start_ratio"] for p in pairs if p.get("start_ratio") is not None]
        worst = max(pairs, key=lambda p: p.get("start_ratio") or 0.0)
        low, high = f"{min(ratios, default=0):.3g}", f"{max(ratios, default=0):.3g}"
        spanned = f" (over seeds {low}x..{high}x)" if low != high else ""
        row["verdict"] = f"not matched: {worst['why']}{spanned}"
    else:
        row["verdict"] = "not matched: the FLOPs of these runs are unknown (see the warnings)"
    return row


def compute_matched(
    arms: Sequence[Mapping[str, Any]], protocol: Mapping[str, Any], runs: Sequence[Any]
) -> dict[str, Any]:
    """{basis, focus, verdicts}: the focus init against every other init, each at its chosen
    learning rate, at equal total FLOPs (the module docstring); `arms` carry per-run `flops`
    and `log`, `runs` are the RunLogs whose eval rows give the curves."""
    focus, grid = protocol["focus"], protocol["grid"]
    by_arm = {a["arm"]: a for a in arms}
    logs = {str(r.path): r for r in runs}
    equal_steps = {v["against"]: v["verdict"] for v in protocol["verdicts"]}
    verdicts = []
    for row, chosen, other in against_focus(grid, focus):
        init, not_ranked = row["against"], row.pop("verdict", None)
        row["equal_steps_verdict"] = equal_steps.get(init)
        if not_ranked is not None:
            row["verdict"] = not_ranked
        if other is not None:
            row.update(_compare(focus, init, by_arm[chosen], by_arm[other], logs))
        verdicts.append(row)
    return {"basis": BASIS, "focus": focus, "verdicts": verdicts}
