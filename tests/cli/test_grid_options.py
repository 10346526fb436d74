"""`train`'s learning-rate options: one rate or a grid, never both; a grid needs eval rows;
the final eval loss is taken whenever there are eval rows."""

from __future__ import annotations

import csv

import pytest

from tests.conftest import TINY_RUN, assert_user_error, invoke, invoke_json

FAST = ["--rank", "4", *TINY_RUN]


def test_learning_rate_and_a_grid_together_are_refused(tiny_llm, tiny_data, tmp_path):
    train, evaluation = (str(p) for p in tiny_data)
    data = ["--train-data", train, "--eval-data", evaluation, "--init", "random", *FAST]
    result = invoke(
        "train",
        "-b",
        tiny_llm,
        "--learning-rate",
        "1e-3",
        "--learning-rates",
        "1e-3,2e-3",
        "-o",
        tmp_path / "out",
        *data,
    )
    assert_user_error(result, "--learning-rate and --learning-rates", "pass one of them")
    assert not (tmp_path / "out").exists()
    # The grid from svdlora.toml and the single rate on the command line: refused too,
    # naming the key in the file.
    (tmp_path / "svdlora.toml").write_text('learning_rates = "1e-3,2e-3"\n')
    result = invoke("train", "-b", tiny_llm, "--learning-rate", "1e-3", "-o", tmp_path, *data)
    assert_user_error(result, "--learning-rates", "learning_rates", "svdlora.toml")


def test_a_grid_without_eval_rows_is_refused(tiny_llm, tiny_data, tmp_path):
    result = invoke(
        "train",
        "-b",
        tiny_llm,
        "--train-data",
        tiny_data[0],
        "--learning-rates",
        "1e-3,2e-3",
        "--init",
        "random",
        "-o",
        tmp_path / "out",
        *FAST,
    )
    assert_user_error(result, "learning-rate grid", "--eval-data FILE")
    assert not (tmp_path / "out").exists()


def test_one_rate_without_eval_rows_still_trains(tiny_llm, tiny_data, tmp_path):
    doc = invoke_json(
        "train",
        "-b",
        tiny_llm,
        "--train-data",
        tiny_data[0],
        "--learning-rates",
        "1e-3",
        "--init",
        "random",
        "--max-steps",
        "1",
        "-o",
        tmp_path,
        *FAST,
    )
    assert doc["arms"][0]["final_eval_loss"] is None


def test_the_final_eval_loss_is_taken_with_eval_every_0(tiny_llm, tiny_data, tmp_path):
    train, evaluation = (str(p) for p in tiny_data)
    doc = invoke_json(
        "train",
        "-b",
        tiny_llm,
        "--train-data",
        train,
        "--eval-data",
        evaluation,
        "--init",
        "random",
        "--learning-rates",
        "1e-3,2e-3",
        "--eval-every",
        "0",
        "--max-steps",
        "3",
        "-o",
        tmp_path,
        *FAST,
    )
    for arm in doc["arms"]:
        assert arm["final_eval_loss"] is not None and arm["steps"] == 3
        with open(tmp_path / f"training_log_{arm['name']}.csv") as handle:
            evals = [row["eval_loss"] for row in csv.DictReader(handle)]
        assert evals[0] and evals[-1] and not any(evals[1:-1])  # start and end only
        assert float(evals[-1]) == pytest.approx(arm["final_eval_loss"], rel=1e-5)  # 6 digits
