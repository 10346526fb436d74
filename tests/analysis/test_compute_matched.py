"""Compute accounting and the compute-matched verdict on synthetic curves with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from svdlora_cli.analysis.compare import compare_runs, find_logs
from svdlora_cli.analysis.compute_matched import loss_at, match_pair
from svdlora_cli.training.steplog import StepRow, write_step_log
from tests.conftest import invoke_json

STEP = 1e12  # training FLOPs per optimizer step


def _run(
    folder: Path,
    init: str,
    seed: int,
    evals: list[float],
    teacher: float | None = 0.0,
    init_flops: float | None = 0.0,
    lr: float = 1e-4,
    accounted: bool = True,
) -> None:
    """A run with an eval loss at every step and STEP training FLOPs per step; its record's
    summary has the FLOPs parts unless `accounted` is False (a run from before them)."""
    name = f"{init}_lr{lr:g}_seed{seed}"
    rows = [
        StepRow(
            step=i,
            epoch=i / len(evals),
            loss=v,
            eval_loss=v,
            tokens=50 * i,
            flops=i * STEP if accounted else None,
        )
        for i, v in enumerate(evals)
    ]
    write_step_log(folder / f"training_log_{name}.csv", rows)
    model_dir = folder / f"final_model_{name}"
    model_dir.mkdir()
    summary = (
        {
            "training_flops": (len(evals) - 1) * STEP,
            "init_flops": None if init_flops is None else {"kind": "x", "total": init_flops},
            "teacher_flops": teacher,
        }
        if accounted
        else {}
    )
    record = {"init": init, "learning_rate": lr, "seed": seed, "eval_limit": 4, "summary": summary}
    (model_dir / "svdlora_run.json").write_text(json.dumps(record))


# Equal steps: svd ends lower than random at every seed (0.90 vs 1.00, +- 0.01).
RANDOM = [2.0, 1.6, 1.3, 1.1, 1.0]
SVD = [1.5, 1.3, 1.1, 0.95, 0.9]
NOISE = (0.0, 0.01, -0.01)


def _pairs(folder: Path, teacher: float, init: float) -> None:
    for seed, e in enumerate(NOISE):
        _run(folder, "random", seed, [v + e for v in RANDOM])
        _run(folder, "svd", seed, [v + e for v in SVD], teacher=teacher, init_flops=init)


def test_interpolation_in_flops():
    points = [(1.0, 2.0), (3.0, 1.0), (5.0, 0.5)]
    assert loss_at(points, 1.0) == 2.0 and loss_at(points, 5.0) == 0.5
    assert loss_at(points, 2.0) == pytest.approx(1.5)
    assert loss_at(points, 4.5) == pytest.approx(0.625)
    assert loss_at(points, 0.5) is None and loss_at(points, 6.0) is None
    pair = match_pair(("svd", [(2.0, 1.2), (6.0, 0.8)]), ("random", [(0.0, 2.0), (4.0, 1.0)]))
    assert pair["matched"] and pair["budget"] == 4.0
    assert pair["focus_eval_loss"] == pytest.approx(1.0) and pair["difference"] == pytest.approx(0)


def test_the_verdict_flips_from_equal_steps_to_equal_compute(tmp_path):
    """svd's teacher (2e12) and init (0.5e12) cost 2.5 steps of training: at random's whole
    budget (4e12) svd is 1.5 steps in, at an eval loss of 1.2, against random's 1.0."""
    _pairs(tmp_path, teacher=2e12, init=0.5e12)
    doc = compare_runs(find_logs(tmp_path))
    steps = {v["against"]: v for v in doc["protocol"]["verdicts"]}["random"]
    assert steps["verdict"] == "better"  # 0.9 vs 1.0 at equal steps
    section = doc["compute_matched"]
    assert section["focus"] == "svd" and "F*" in section["basis"]
    (row,) = section["verdicts"]
    assert row["against"] == "random" and row["equal_steps_verdict"] == "better"
    assert row["verdict"] == "worse" and row["seeds"] == 3
    for pair, e in zip(row["pairs"], NOISE, strict=True):
        assert pair["matched"] and pair["budget"] == 4e12
        assert pair["focus_flops"] == 6.5e12 and pair["other_flops"] == 4e12
        # svd's eval points sit at 2.5, 3.5, 4.5 ... e12: 4e12 is half-way from 1.3 to 1.1.
        assert pair["focus_eval_loss"] == pytest.approx(1.2 + e)
        assert pair["other_eval_loss"] == pytest.approx(1.0 + e)
    assert row["mean_difference"] == pytest.approx(0.2)
    assert row["ci_low"] == pytest.approx(0.2) and row["ci_high"] == pytest.approx(0.2)
    arms = {a["arm"]: a for a in doc["arms"]}
    svd = arms["svd_lr0.0001"]["flops"]
    assert svd == pytest.approx(
        {"training": 4e12, "init": 0.5e12, "teacher": 2e12, "total": 6.5e12}
    )
    assert arms["random_lr0.0001"]["flops"]["total"] == 4e12


def test_a_cheap_teacher_keeps_the_equal_steps_verdict(tmp_path):
    _pairs(tmp_path, teacher=0.0, init=0.0)  # no overhead: equal compute is equal steps
    row = compare_runs(find_logs(tmp_path))["compute_matched"]["verdicts"][0]
    assert row["verdict"] == "better" and row["mean_difference"] == pytest.approx(-0.1)


def test_an_overhead_above_the_other_whole_run_is_not_matched(tmp_path):
    """svd's teacher and init (5e12) cost more than random's whole run (4e12)."""
    _pairs(tmp_path, teacher=4e12, init=1e12)
    row = compare_runs(find_logs(tmp_path))["compute_matched"]["verdicts"][0]
    assert row["seeds"] == 0 and row["mean_difference"] is None
    assert row["verdict"].startswith("not matched: svd's teacher and init alone (5e+12 FLOPs)")
    assert "random's whole run (4e+12 FLOPs): 1.25x" in row["verdict"]
    pair = row["pairs"][1]
    assert not pair["matched"] and pair["cheaper"] == "random" and pair["costlier"] == "svd"
    assert pair["cheaper_final_eval_loss"] == pytest.approx(1.01)
    assert pair["costlier_initial_eval_loss"] == pytest.approx(1.51)
    assert pair["costlier_start_flops"] == 5e12 and pair["cheaper_final_flops"] == 4e12
    assert pair["start_ratio"] == pytest.approx(1.25)


def test_missing_flops_are_null_with_a_warning_never_zero(tmp_path):
    for seed in (0, 1):
        _run(tmp_path, "random", seed, RANDOM)
        _run(tmp_path, "svd", seed, SVD, teacher=None)  # the teacher's FLOPs unknown
        _run(tmp_path, "pissa", seed, SVD, accounted=False)  # a run from before accounting
    doc = compare_runs(find_logs(tmp_path))
    arms = {a["init"]: a for a in doc["arms"]}
    assert arms["svd"]["flops"] == {"training": 4e12, "init": 0.0, "teacher": None, "total": None}
    assert arms["pissa"]["flops"] == {"training": None, "init": None, "teacher": 0.0, "total": None}
    assert arms["random"]["flops"]["total"] == 4e12  # random: no init cost, no teacher
    notes = [w for w in doc["warnings"] if "total FLOPs unknown" in w]
    assert len(notes) == 2 and any("no teacher FLOPs" in n for n in notes)
    assert any("no training, no init FLOPs" in n for n in notes)
    verdicts = {v["against"]: v for v in doc["compute_matched"]["verdicts"]}
    assert verdicts["random"]["verdict"].startswith("not matched: the FLOPs of these runs")
    assert verdicts["random"]["unknown_seeds"] == [0, 1]


def test_compare_json_and_reports_carry_flops_edges_and_the_compute_matched_table(tmp_path):
    _pairs(tmp_path, teacher=2e12, init=0.5e12)
    doc = invoke_json("compare", tmp_path)
    arm = next(a for a in doc["arms"] if a["init"] == "svd")
    assert set(arm["flops"]) == {"training", "init", "teacher", "total"}
    assert set(arm["runs"][0]["flops"]) == {"training", "init", "teacher", "total"}
    assert doc["protocol"]["grid"]["svd"]["edge_of_grid"] is None  # one learning rate
    assert doc["compute_matched"]["verdicts"][0]["verdict"] == "worse"
    markdown = (tmp_path / "comparison_report.md").read_text()
    assert "## Compute-matched verdict" in markdown
    assert "| random | 6.5e+12 | 4e+12 | 4e+12 | 1.2000 | 1.0000 | +0.2000 |" in markdown
    assert "| worse | better |" in markdown
    text = (tmp_path / "comparison_report.txt").read_text()
    assert "Compute-matched verdict" in text and "FLOPs" in text
    detail = text.split("Per arm (mean ± std over seeds)")[1].splitlines()
    rows = {line.split()[0]: line.split()[-1] for line in detail[2:6] if line[0] != "-"}
    assert rows == {"arm": "FLOPs", "random_lr0.0001": "4e+12", "svd_lr0.0001": "6.5e+12"}


def test_the_report_says_which_pairs_were_not_matched(tmp_path):
    _pairs(tmp_path, teacher=4e12, init=1e12)
    invoke_json("compare", tmp_path)
    markdown = (tmp_path / "comparison_report.md").read_text()
    assert (
        "- svd vs random, seed 0: not matched: svd's teacher and init alone (5e+12 FLOPs) cost "
        "more than random's whole run (4e+12 FLOPs): 1.25x; instead, random's final eval loss "
        "1.0000 at 4e+12 FLOPs against svd's step-0 eval loss 1.5000 at 5e+12 FLOPs"
    ) in markdown
