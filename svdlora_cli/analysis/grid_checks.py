"""What `compare` warns about a grid of runs: runs and grid cells without an eval loss, and
chosen learning rates at the edge of their grid. Pure functions over the runs and the
protocol's grid; each returns warning lines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def eval_loss_warnings(runs: Sequence[Any]) -> list[str]:
    """Student runs without any eval loss: no learning rate is chosen and no verdict given."""
    students = [r for r in runs if not r.is_teacher]
    missing = [r for r in students if all(row.eval_loss is None for row in r.rows)]
    if not missing:
        return []
    unset = all("eval_data" in r.record and r.record["eval_data"] is None for r in missing)
    cause = " (trained without an eval set: --train-data without --eval-data)" if unset else ""
    fix = (
        "rerun `svdlora train` with --eval-data FILE (held-out rows; the eval loss is taken "
        "at the first and last step, and every N steps with --eval-every N)"
    )
    if len(missing) == len(students):
        return [
            f"no run has an eval loss{cause}: no learning rate is chosen, no verdict is given "
            f"and no gap recovered is computed; {fix}"
        ]
    return [
        f"{len(missing)} of {len(students)} runs have no eval loss{cause}: "
        f"{', '.join(r.name for r in missing)}; they are left out of the learning-rate "
        f"choice and the verdicts; {fix}"
    ]


def precision_warnings(runs: Sequence[Any]) -> list[str]:
    """Student runs trained in bf16/fp16: what their losses can and cannot show
    (training/eval_precision.py has the measurement)."""
    low = [r for r in runs if not r.is_teacher and r.record.get("precision") in ("bf16", "fp16")]
    if not low:
        return []
    kind = "/".join(sorted({str(r.record["precision"]) for r in low}))
    notes = [
        f"{len(low)} student run(s) trained in {kind}: each step's training loss (and so "
        f"steps to target) comes from a {kind} forward, which drops a LoRA change below half "
        f"a {kind} step of an activation, so a B = 0 arm's first steps show less progress "
        "than they made and an svd arm's do not; the eval losses are fp32 (use them)"
    ]
    summary = [r.record.get("summary") for r in low]
    autocast = [
        r.name
        for r, s in zip(low, summary, strict=True)
        if not (isinstance(s, dict) and s.get("eval_precision") == "fp32")
    ]
    if autocast:
        notes.append(
            f"the eval losses of {len(autocast)} {kind} run(s) were computed under {kind} "
            f"autocast (several processes, or an older svdlora): {', '.join(autocast[:3])}"
            f"{' ...' if len(autocast) > 3 else ''}; they understate small adapters, so "
            "compare them only with each other, or rerun them in one process"
        )
    return notes


def _lr(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def missing_eval_cells(grid: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One warning per grid cell (init x learning rate) none of whose runs has an eval loss;
    none when no cell has one (`eval_loss_warnings` says so once)."""
    cells = [(init, c) for init, entry in grid.items() for c in entry["cells"]]
    empty = [(init, c) for init, c in cells if not c["n"]]
    if len(empty) == len(cells):
        return []
    return [
        f"{init} at learning rate {_lr(c['learning_rate'])} ({c['arm']}): none of its runs "
        "has an eval loss, so this cell of the grid cannot be chosen; rerun it with --eval-data"
        for init, c in empty
    ]


def grid_edge_warnings(grid: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The inits whose chosen learning rate is the smallest or largest they were tried at."""
    notes = []
    for init, entry in grid.items():
        if entry.get("edge_of_grid"):
            rates = sorted({c["learning_rate"] for c in entry["cells"]} - {None})
            notes.append(
                f"{init}: chosen learning rate {_lr(entry['chosen'])} is at the edge of the "
                f"grid (tried {_lr(rates[0])}..{_lr(rates[-1])}): widen it"
            )
    return notes


def grid_warnings(protocol: Mapping[str, Any]) -> list[str]:
    """The grid's warnings: cells without an eval loss, then chosen rates at an edge."""
    grid = protocol.get("grid") or {}
    return [*missing_eval_cells(grid), *grid_edge_warnings(grid)]
