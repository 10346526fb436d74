"""compare's grid warnings: chosen learning rates at the edge of their grid, and grid cells
without any eval loss."""

from __future__ import annotations

from svdlora_cli.analysis.compare import compare_runs, find_logs
from svdlora_cli.analysis.grid_checks import grid_edge_warnings, missing_eval_cells
from svdlora_cli.training.steplog import StepRow, write_step_log
from tests.analysis.test_protocol import _run
from tests.conftest import invoke_json

# Final eval loss per (init, lr), seeds 0 and 1: random is best in the middle of three
# rates, svd at the smallest of two, subspace was tried at one rate only.
CELLS = {
    ("random", 1e-4): [1.5, 1.6],
    ("random", 3e-4): [1.1, 1.2],
    ("random", 1e-3): [1.3, 1.4],
    ("svd", 1e-4): [0.8, 0.9],
    ("svd", 1e-3): [1.0, 1.1],
    ("subspace", 1e-4): [1.0, 1.1],
}


def _grid(folder) -> None:
    for (init, lr), values in CELLS.items():
        for seed, value in enumerate(values):
            _run(folder, init, lr, seed, value)


def test_edge_of_grid_is_set_per_init_and_warned(tmp_path):
    _grid(tmp_path)
    doc = compare_runs(find_logs(tmp_path))
    grid = doc["protocol"]["grid"]
    assert grid["random"]["chosen"] == 3e-4 and grid["random"]["edge_of_grid"] is False
    assert grid["svd"]["chosen"] == 1e-4 and grid["svd"]["edge_of_grid"] is True
    assert grid["subspace"]["edge_of_grid"] is None  # one rate: cannot tell
    edges = [w for w in doc["warnings"] if "edge of the grid" in w]
    assert edges == [
        "svd: chosen learning rate 0.0001 is at the edge of the grid (tried 0.0001..0.001): "
        "widen it"
    ]


def test_the_largest_rate_is_an_edge_too():
    grid = {
        "random": {
            "chosen": 1e-3,
            "edge_of_grid": True,
            "cells": [{"learning_rate": 1e-4}, {"learning_rate": 3e-4}, {"learning_rate": 1e-3}],
        }
    }
    assert grid_edge_warnings(grid) == [
        "random: chosen learning rate 0.001 is at the edge of the grid (tried 0.0001..0.001): "
        "widen it"
    ]


def _no_evals(folder, init: str, lr: float, seed: int) -> None:
    """A run of the grid whose log has no eval loss at all."""
    _run(folder, init, lr, seed, 1.0)
    path = folder / f"training_log_{init}_lr{lr:g}_seed{seed}.csv"
    rows = [StepRow(step=i, epoch=i / 4, loss=2.0 - i / 8, tokens=50 * i) for i in range(5)]
    write_step_log(path, rows)


def test_a_grid_cell_without_eval_loss_is_warned_about(tmp_path):
    _grid(tmp_path)
    for seed in (0, 1):
        _no_evals(tmp_path, "svd", 3e-3, seed)
    doc = compare_runs(find_logs(tmp_path))
    cells = [w for w in doc["warnings"] if "this cell of the grid cannot be chosen" in w]
    assert cells == [
        "svd at learning rate 0.003 (svd_lr0.003): none of its runs has an eval loss, so this "
        "cell of the grid cannot be chosen; rerun it with --eval-data"
    ]
    # The cell still counts as tried: svd's best rate 1e-4 is the smallest of three.
    assert doc["protocol"]["grid"]["svd"]["edge_of_grid"] is True


def test_one_eval_loss_in_a_cell_is_enough_and_no_evals_anywhere_is_one_warning(tmp_path):
    grid = {
        "svd": {"cells": [{"learning_rate": 1e-4, "arm": "a", "n": 1}]},
        "random": {"cells": [{"learning_rate": 1e-4, "arm": "b", "n": 0}]},
    }
    assert len(missing_eval_cells(grid)) == 1
    grid["svd"]["cells"][0]["n"] = 0
    assert missing_eval_cells(grid) == []  # eval_loss_warnings says it once for every run
    for init in ("svd", "random"):
        _no_evals(tmp_path, init, 1e-4, 0)
    doc = compare_runs(find_logs(tmp_path))
    assert [w for w in doc["warnings"] if "eval loss" in w] == [
        next(w for w in doc["warnings"] if w.startswith("no run has an eval loss"))
    ]


def test_compare_json_carries_edge_of_grid_and_the_report_the_warning(tmp_path):
    _grid(tmp_path)
    doc = invoke_json("compare", tmp_path)
    assert {i: e["edge_of_grid"] for i, e in doc["protocol"]["grid"].items()} == {
        "random": False,
        "subspace": None,
        "svd": True,
    }
    # every arm (init x learning rate) names its init's chosen rate and the edge flag
    for arm in doc["arms"]:
        if arm["arm"] != "teacher":
            entry = doc["protocol"]["grid"][arm["init"]]
            assert arm["chosen_learning_rate"] == entry["chosen"]
            assert arm["edge_of_grid"] is entry["edge_of_grid"]
    report = (tmp_path / "comparison_report.md").read_text()
    assert "svd: chosen learning rate 0.0001 is at the edge of the grid" in report


def test_bf16_students_are_warned_about_their_training_losses_and_autocast_evals(tmp_path):
    """bf16 training losses understate a B = 0 arm's early progress; an eval that also ran
    under autocast (several processes, an older run) is named; fp32 runs get no note."""
    fp32 = tmp_path / "fp32"
    fp32.mkdir()
    _run(fp32, "random", 1e-3, 0, 1.2, precision="no")
    _run(fp32, "svd", 1e-3, 0, 1.0, precision="no")
    assert not [w for w in compare_runs(find_logs(fp32))["warnings"] if "bf16" in w]
    low = tmp_path / "bf16"
    low.mkdir()
    _run(low, "random", 1e-3, 0, 1.2, precision="bf16", summary={"eval_precision": "fp32"})
    _run(low, "svd", 1e-3, 0, 1.0, precision="bf16", summary={"eval_precision": "bf16"})
    warnings = [w for w in compare_runs(find_logs(low))["warnings"] if "bf16" in w]
    assert len(warnings) == 2
    assert (
        warnings[0].startswith("2 student run(s) trained in bf16")
        and "steps to target" in warnings[0]
    )
    assert "of 1 bf16 run(s) were computed under bf16 autocast" in warnings[1]
    assert "svd_lr0.001_seed0" in warnings[1] and "random_lr" not in warnings[1]
