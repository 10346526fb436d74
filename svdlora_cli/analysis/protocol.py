"""The fair-comparison protocol over a grid of runs: only comparable runs, each once (see
`comparable.select_comparable`), one learning rate chosen per init on held-out eval loss, equal
budgets checked, and a paired verdict by seed.

Selection uses the final eval loss only (never the training loss or the accuracy
rows). A verdict compares the focus init (the init registry's FOCUS_INIT, svd) with every
other init at their chosen learning rates, paired by seed: the mean difference and its 95%
CI (Student t); "better" or "worse" only when the interval excludes 0, else "no difference
detected".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from ..training.init_registry import FOCUS_INIT
from .curve_stats import spread

# (figure, what it measures); lower is better for each.
VERDICT_FIGURES = (
    ("final_eval_loss", "final eval loss"),
    ("auc", "loss AUC"),
    ("steps_to_target", "steps to target"),
)
SELECTION_FIGURE = "final_eval_loss"


def _student_runs(arms: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(a, r) for a in arms if a["arm"] != "teacher" for r in a["runs"]]


def budgets(arms: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Optimizer steps and real tokens of every student run: equal within each seed (the
    seed fixes the batches, so token counts differ between seeds but never between arms)."""
    seen: dict[tuple[Any, Any, Any], list[str]] = {}
    for _, run in _student_runs(arms):
        key = (run.get("seed"), run.get("steps"), run.get("tokens"))
        seen.setdefault(key, []).append(run["name"])
    seeds = [seed for seed, _, _ in seen]
    steps = {steps for _, steps, _ in seen}
    return {
        "equal": len(seeds) == len(set(seeds)) and len(steps) <= 1,
        "groups": [
            {"seed": seed, "steps": steps, "tokens": tokens, "runs": names}
            for (seed, steps, tokens), names in sorted(seen.items(), key=lambda kv: str(kv[0]))
        ],
    }


def grid(arms: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """init -> {cells: [{learning_rate, arm, mean, ci_low, ci_high, n}], chosen: lr | None,
    chosen_arm, edge_of_grid}: edge_of_grid says whether the chosen rate is the smallest or
    largest of the init's own grid (None with fewer than two rates, or none chosen)."""
    out: dict[str, dict[str, Any]] = {}
    for arm in arms:
        if arm["arm"] == "teacher":
            continue
        values = [run.get(SELECTION_FIGURE) for run in arm["runs"]]
        cell = {"learning_rate": arm.get("learning_rate"), "arm": arm["arm"]}
        cell.update(asdict(spread(values)))
        out.setdefault(arm["init"], {"cells": [], "chosen": None, "chosen_arm": None})
        out[arm["init"]]["cells"].append(cell)
    for entry in out.values():
        entry["cells"].sort(key=lambda c: (c["learning_rate"] is None, c["learning_rate"] or 0))
        known = [c for c in entry["cells"] if c["mean"] is not None]
        if known:
            best = min(known, key=lambda c: c["mean"])
            best["chosen"] = True
            entry["chosen"], entry["chosen_arm"] = best["learning_rate"], best["arm"]
        rates = sorted({c["learning_rate"] for c in entry["cells"]} - {None})
        known_rate = entry["chosen"] is not None and len(rates) >= 2
        entry["edge_of_grid"] = entry["chosen"] in (rates[0], rates[-1]) if known_rate else None
    return out


def verdict_word(low: float | None, high: float | None) -> str:
    """better / worse when the 95% CI of focus - other excludes 0, else no difference."""
    if low is not None and high is not None:
        if high < 0:
            return "better"
        if low > 0:
            return "worse"
    return "no difference detected"


def paired(focus: dict[str, Any], other: dict[str, Any], figure: str) -> dict[str, Any]:
    """focus - other per shared seed (lower is better), its mean and 95% CI, and the verdict."""
    theirs = {run["seed"]: run.get(figure) for run in other["runs"]}
    diffs = [
        run[figure] - theirs[run["seed"]]
        for run in focus["runs"]
        if run["seed"] in theirs and run.get(figure) is not None and theirs[run["seed"]] is not None
    ]
    s = spread(diffs)
    return {
        "mean_difference": s.mean,
        "ci_low": s.ci_low,
        "ci_high": s.ci_high,
        "seeds": s.n,
        "verdict": verdict_word(s.ci_low, s.ci_high),
    }


def against_focus(
    table: Mapping[str, Mapping[str, Any]], focus: str
) -> Iterator[tuple[dict[str, Any], str, str | None]]:
    """Each other init of the grid against the focus, at their chosen learning rates: the
    verdict row's head, the focus's chosen arm and the other's (None: no eval loss, and the
    row already says so). Nothing when the focus has no chosen arm."""
    chosen = table.get(focus, {}).get("chosen_arm")
    if chosen is None:
        return
    for init, entry in table.items():
        if init == focus:
            continue
        row: dict[str, Any] = {
            "against": init,
            "focus_learning_rate": table[focus]["chosen"],
            "other_learning_rate": entry["chosen"],
        }
        if entry["chosen_arm"] is None:
            row["verdict"] = f"not ranked: no {init} run has a final eval loss"
        yield row, chosen, entry["chosen_arm"]


def protocol(arms: Sequence[dict[str, Any]], focus: str = FOCUS_INIT) -> dict[str, Any]:
    """The grid with the chosen learning rates, the budget check and the paired verdicts."""
    table = grid(arms)
    budget = budgets(arms)
    by_arm = {a["arm"]: a for a in arms}
    verdicts = []
    for row, chosen, other in against_focus(table, focus):
        if other is None or not budget["equal"]:
            row.setdefault("verdict", "not ranked: the arms' budgets differ")
            verdicts.append(row)
            continue
        row["figures"] = {
            figure: paired(by_arm[chosen], by_arm[other], figure) for figure, _ in VERDICT_FIGURES
        }
        row["verdict"] = row["figures"][SELECTION_FIGURE]["verdict"]
        row["seeds"] = row["figures"][SELECTION_FIGURE]["seeds"]
        verdicts.append(row)
    return {
        "focus": focus,
        "selection": f"per init, the learning rate with the lowest mean {SELECTION_FIGURE}",
        "grid": table,
        "budgets": budget,
        "verdicts": verdicts,
        "no_verdict": None if verdicts else _no_verdict(table, focus),
    }


def _no_verdict(table: dict[str, dict[str, Any]], focus: str) -> str:
    """Why there is no verdict at all, in words."""
    if len(table) < 2:
        return "fewer than two inits: nothing to compare"
    if focus not in table:
        return f"no {focus} runs: each verdict compares {focus} with another init"
    return f"no {focus} run has a final eval loss, so no learning rate is chosen for it"
