"""The fair-comparison protocol on synthetic logs with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy import stats

from svdlora_cli.analysis.comparable import select_comparable
from svdlora_cli.analysis.compare import compare_runs, find_logs
from svdlora_cli.analysis.protocol import protocol
from svdlora_cli.training.steplog import StepRow, write_step_log
from tests.conftest import assert_user_error, invoke, invoke_json


def _run(
    folder: Path,
    init: str,
    lr: float,
    seed: int,
    final_eval: float,
    steps: int = 4,
    name: str | None = None,
    **recorded: object,
) -> None:
    """A log whose eval loss falls linearly to `final_eval`, and the run record beside it."""
    name = name or f"{init}_lr{lr:g}_seed{seed}"
    rows = [
        StepRow(
            step=i,
            epoch=i / steps,
            loss=2.0 - i * (2.0 - final_eval) / steps,
            eval_loss=2.0 - i * (2.0 - final_eval) / steps,
            tokens=50 * i,
        )
        for i in range(steps + 1)
    ]
    write_step_log(folder / f"training_log_{name}.csv", rows)
    model_dir = folder / ("final_model" if name == "teacher" else f"final_model_{name}")
    model_dir.mkdir()
    record = {"init": init, "learning_rate": lr, "seed": seed, "eval_limit": 4, **recorded}
    (model_dir / "svdlora_run.json").write_text(json.dumps(record))


# Final eval loss per (init, lr) over seeds 0, 1, 2.
GRID = {
    ("random", 1e-4): [1.50, 1.52, 1.49],
    ("random", 1e-3): [1.10, 1.20, 1.15],  # random's best lr
    ("svd", 1e-4): [0.80, 0.86, 0.83],  # svd's best lr
    ("svd", 1e-3): [0.90, 0.95, 0.92],
    ("subspace", 1e-4): [1.12, 1.30, 1.05],  # subspace's best: mean 1.157 < 1.160
    ("subspace", 1e-3): [1.14, 1.18, 1.16],
}


@pytest.fixture
def grid_dir(tmp_path) -> Path:
    for (init, lr), values in GRID.items():
        for seed, value in enumerate(values):
            _run(tmp_path, init, lr, seed, value)
    return tmp_path


def test_selection_is_the_argmin_of_the_mean_eval_loss(grid_dir):
    doc = compare_runs(find_logs(grid_dir))
    grid = doc["protocol"]["grid"]
    for init in ("random", "svd", "subspace"):
        means = {lr: sum(v) / len(v) for (i, lr), v in GRID.items() if i == init}
        assert grid[init]["chosen"] == min(means, key=means.get)
        cells = {c["learning_rate"]: c for c in grid[init]["cells"]}
        for lr, mean in means.items():
            assert cells[lr]["mean"] == pytest.approx(mean)
            assert cells[lr]["n"] == 3
        assert [c["learning_rate"] for c in grid[init]["cells"] if c.get("chosen")] == [
            grid[init]["chosen"]
        ]


def test_paired_verdicts_against_an_independent_t_interval(grid_dir):
    doc = compare_runs(find_logs(grid_dir))
    verdicts = {v["against"]: v for v in doc["protocol"]["verdicts"]}
    assert doc["protocol"]["budgets"]["equal"]
    # svd (1e-4) against random (1e-3): every seed lower by 0.30-0.34, the CI excludes 0.
    diffs = [a - b for a, b in zip(GRID[("svd", 1e-4)], GRID[("random", 1e-3)], strict=True)]
    low, high = stats.t.interval(0.95, len(diffs) - 1, loc=sum(diffs) / 3, scale=stats.sem(diffs))
    figure = verdicts["random"]["figures"]["final_eval_loss"]
    assert figure["mean_difference"] == pytest.approx(sum(diffs) / 3)
    assert (figure["ci_low"], figure["ci_high"]) == pytest.approx((low, high))
    assert verdicts["random"]["verdict"] == "better" and verdicts["random"]["seeds"] == 3
    assert verdicts["random"]["other_learning_rate"] == 1e-3


def test_an_interval_that_includes_zero_is_no_difference(tmp_path):
    for seed, (a, b) in enumerate([(0.9, 1.0), (1.1, 1.0), (1.0, 1.02)]):
        _run(tmp_path, "svd", 1e-4, seed, a)
        _run(tmp_path, "random", 1e-4, seed, b)
    verdict = compare_runs(find_logs(tmp_path))["protocol"]["verdicts"][0]
    assert verdict["verdict"] == "no difference detected"
    f = verdict["figures"]["final_eval_loss"]
    assert f["ci_low"] < 0 < f["ci_high"]


def test_worse_when_the_interval_lies_above_zero(tmp_path):
    for seed, (a, b) in enumerate([(1.3, 1.0), (1.25, 1.0), (1.35, 1.05)]):
        _run(tmp_path, "svd", 1e-4, seed, a)
        _run(tmp_path, "random", 1e-4, seed, b)
    assert compare_runs(find_logs(tmp_path))["protocol"]["verdicts"][0]["verdict"] == "worse"


def test_one_seed_gives_no_interval_and_no_claim(tmp_path):
    _run(tmp_path, "svd", 1e-4, 0, 0.5)
    _run(tmp_path, "random", 1e-4, 0, 1.5)
    verdict = compare_runs(find_logs(tmp_path))["protocol"]["verdicts"][0]
    assert verdict["verdict"] == "no difference detected" and verdict["seeds"] == 1


def test_budgets_that_differ_are_never_pooled_nor_ranked(tmp_path):
    for seed in (0, 1):
        _run(tmp_path, "svd", 1e-4, seed, 0.5, steps=4)
        _run(tmp_path, "random", 1e-4, seed, 1.5, steps=8)
    # Two equally large groups with other budgets: an error, not a guess.
    assert_user_error(invoke("compare", tmp_path), "equally large groups", "budget")
    _run(tmp_path, "svd", 1e-4, 2, 0.5, steps=4)
    doc = compare_runs(find_logs(tmp_path))  # the larger group is compared, alone
    assert [a["arm"] for a in doc["arms"]] == ["svd_lr0.0001"]
    assert doc["set_apart"][0]["kind"] == "not comparable"
    assert "budget (optimizer steps) 8 (the compared runs: 4)" in doc["set_apart"][0]["reason"]
    # And the protocol itself never ranks arms whose budgets differ.
    arms = [
        {"arm": init, "init": init, "learning_rate": 1e-4, "runs": [run]}
        for init, run in (
            ("svd", {"name": "s", "seed": 0, "steps": 4, "tokens": 9, "final_eval_loss": 0.5}),
            ("random", {"name": "r", "seed": 0, "steps": 8, "tokens": 9, "final_eval_loss": 1}),
        )
    ]
    fair = protocol(arms)
    assert not fair["budgets"]["equal"]
    assert fair["verdicts"][0]["verdict"] == "not ranked: the arms' budgets differ"


def test_compare_writes_the_grid_the_verdict_and_the_lr_plot(grid_dir):
    doc = invoke_json("compare", str(grid_dir))
    assert Path(doc["artifacts"]["lr_sensitivity"]).is_file()
    markdown = (grid_dir / "comparison_report.md").read_text()
    assert "## Learning-rate grid" in markdown and "## Verdict (paired by seed)" in markdown
    assert "svd (lr 0.0001) vs random (lr 0.001): better" in markdown
    # The seed's table shows each init once, at its chosen learning rate.
    assert "| Metric | random | subspace | svd | subspace vs random | svd vs random |" in markdown
    assert "Each init at the learning rate chosen" in markdown
    assert (
        "Budgets: equal (4 optimizer steps per run; real tokens per run: 200 (seed 0)" in markdown
    )


def test_protocol_ignores_the_teacher():
    arms = [
        {"arm": "teacher", "init": "teacher", "runs": [{"name": "teacher", "seed": None}]},
    ]
    assert protocol(arms)["grid"] == {} and protocol(arms)["verdicts"] == []


@pytest.mark.parametrize(
    ("grid", "fragment"),
    [
        ("", "is empty"),
        ("1e-4,-1", "positive finite"),
        ("1e-4,nan", "positive finite"),
        ("1e-4,inf", "positive finite"),
        ("a,b", "not a list"),
        ("1e-4,1e-4", "repeats"),
    ],
)
def test_a_bad_grid_is_an_error(grid, fragment):
    assert_user_error(invoke("train", "-b", "x", "--learning-rates", grid), fragment)


def test_accuracy_decodes_only_the_chosen_cells_of_a_grid(grid_dir):
    from svdlora_cli.analysis.accuracy import _chosen_arms

    doc = compare_runs(find_logs(grid_dir))
    assert _chosen_arms(doc) == {"random_lr0.001", "svd_lr0.0001", "subspace_lr0.0001"}
    single = compare_runs([r for r in find_logs(grid_dir) if "lr0.001_" in r.name])
    assert _chosen_arms(single) is None  # one learning rate: every run is decoded


def test_gap_recovered_uses_the_random_runs_of_a_grid(grid_dir):
    doc = compare_runs(find_logs(grid_dir))
    svd = next(a for a in doc["arms"] if a["arm"] == "svd_lr0.0001")
    # No teacher log here, so no gap; but the same-seed random run is found in the grid
    # (the first random arm by name, random_lr0.0001), and each run is measured against it.
    for run in svd["runs"]:
        random, mine = GRID[("random", 1e-4)][run["seed"]], GRID[("svd", 1e-4)][run["seed"]]
        assert run["improvement_over_random_pct"] == pytest.approx(100 * (random - mine) / random)


def test_accuracy_rows_start_after_the_eval_loss_rows(grid_dir):
    from svdlora_cli.analysis.accuracy import accuracy_offset

    runs = find_logs(grid_dir)
    assert accuracy_offset(runs) == 4  # every record says eval_limit 4
    for run in runs:
        run.record["eval_limit"] = None
    assert accuracy_offset(runs) == 0


def test_a_tie_goes_to_the_teachers_group_and_unrecorded_runs_are_set_apart(tmp_path):
    for seed in (0, 1):
        _run(tmp_path, "svd", 1e-4, seed, 0.5, base_model="A")
        _run(tmp_path, "random", 1e-4, seed, 1.5, base_model="B")
    _run(tmp_path, "subspace", 1e-4, 0, 1.0)  # an older run: no base model recorded
    _run(tmp_path, "teacher", 1e-3, 0, 0.4, name="teacher", base_model="B")
    selection = select_comparable(find_logs(tmp_path))
    assert [r.name for r in selection.runs] == [
        "teacher",
        "random_lr0.0001_seed0",
        "random_lr0.0001_seed1",
    ]
    why = {e["kind"]: e for e in selection.set_apart}
    assert set(why) == {"no record", "not comparable"}
    assert [r["name"] for r in why["no record"]["runs"]] == ["subspace_lr0.0001_seed0"]
    assert why["not comparable"]["reason"].endswith("base_model A (the compared runs: B)")
    assert len(selection.warnings) == 2


def test_one_name_with_two_learning_rates_is_two_arms(tmp_path):
    """Two single-lr `train` calls both name their runs svd_seed<k>: never one arm."""
    for seed, lr in ((0, 1e-4), (1, 1e-4), (2, 1e-3), (3, 1e-3)):
        _run(tmp_path, "svd", lr, seed, 0.5 + lr * 100, name=f"svd_seed{seed}")
    doc = compare_runs(find_logs(tmp_path))
    arms = {a["arm"]: a for a in doc["arms"]}
    assert set(arms) == {"svd_lr0.0001", "svd_lr0.001"}
    assert arms["svd_lr0.0001"]["seeds"] == [0, 1] and arms["svd_lr0.001"]["seeds"] == [2, 3]
    assert arms["svd_lr0.001"]["final_eval_loss"] == pytest.approx(0.6)
    assert any("runs named svd have 2 inits/learning rates" in w for w in doc["warnings"])
