"""What the teacher buys: svd arms ordered by the teacher steps behind their init."""

from __future__ import annotations

from svdlora_cli.analysis.teacher_budget import teacher_budget
from svdlora_cli.reporting.teacher_budget_plot import teacher_budget_png


def _arm(arm: str, init: str, lr: float, recovered: float, step: int | None = None) -> dict:
    return {
        "arm": arm,
        "init": init,
        "learning_rate": lr,
        "teacher_step": step,
        "teacher_steps_total": 40 if step is not None else None,
        "recovered_end": recovered,
        "flops": {"teacher": None if step is None else step * 1e12, "total": 5e12},
    }


def _cell(lr: float, mean: float, chosen: bool) -> dict:
    return {
        "learning_rate": lr,
        "mean": mean,
        "ci_low": mean - 0.1,
        "ci_high": mean + 0.1,
        "n": 3,
        "chosen": chosen,
    }


def _doc() -> dict:
    arms = [
        _arm("random_lr0.001", "random", 1e-3, 0.5),
        _arm("random_lr0.0001", "random", 1e-4, 0.2),
        _arm("svd_lr0.0001", "svd", 1e-4, 0.9, step=40),
        _arm("svd@5_lr0.0001", "svd@5", 1e-4, 0.7, step=5),
        _arm("svd@1_lr0.001", "svd@1", 1e-3, 0.55, step=1),
    ]
    grid = {
        "random": {
            "cells": [_cell(1e-4, 1.3, False), _cell(1e-3, 1.0, True)],
            "chosen": 1e-3,
            "chosen_arm": "random_lr0.001",
        },
        "svd": {"cells": [_cell(1e-4, 0.6, True)], "chosen": 1e-4, "chosen_arm": "svd_lr0.0001"},
        "svd@5": {
            "cells": [_cell(1e-4, 0.8, True)],
            "chosen": 1e-4,
            "chosen_arm": "svd@5_lr0.0001",
        },
        "svd@1": {
            "cells": [_cell(1e-3, 0.95, True)],
            "chosen": 1e-3,
            "chosen_arm": "svd@1_lr0.001",
        },
    }
    return {"arms": arms, "protocol": {"grid": grid}}


def test_svd_arms_are_ordered_by_teacher_steps_at_their_chosen_rates(tmp_path):
    budget = teacher_budget(_doc())
    assert budget is not None
    points = budget["families"]["svd"]
    assert [p["teacher_step"] for p in points] == [1, 5, 40]
    assert [p["init"] for p in points] == ["svd@1", "svd@5", "svd"]
    assert [p["final_eval_loss"] for p in points] == [0.95, 0.8, 0.6]
    assert [p["final"] for p in points] == [False, False, True]
    assert points[1]["teacher_flops"] == 5e12 and points[1]["seeds"] == 3
    # the reference is random at its chosen rate (1e-3), not its other cell
    (reference,) = budget["references"]
    assert (reference["init"], reference["final_eval_loss"], reference["recovered_end"]) == (
        "random",
        1.0,
        0.5,
    )
    path = teacher_budget_png(budget, tmp_path / "teacher_budget.png")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_no_plot_without_a_known_teacher_step():
    doc = _doc()
    for arm in doc["arms"]:
        arm["teacher_step"] = None  # runs from before teacher checkpoints were recorded
    assert teacher_budget(doc) is None
    lone = {
        "arms": [_arm("svd_lr0.0001", "svd", 1e-4, 0.9, step=40)],
        "protocol": {"grid": {"svd": _doc()["protocol"]["grid"]["svd"]}},
    }
    assert teacher_budget(lone) is None  # one point: nothing to set against
