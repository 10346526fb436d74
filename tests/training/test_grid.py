"""`train --learning-rates` with `--seeds`: one run per (init, lr, seed), same batches per seed."""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path

from tests.conftest import invoke_json

FAST = ["--max-steps", "2", "--batch-size", "4", "--max-length", "64", "--device", "cpu"]


def test_the_grid_runs_every_cell_on_the_same_batches_per_seed(tiny_llm, tiny_data, tmp_path):
    train, evaluation = (str(p) for p in tiny_data)
    out = tmp_path / "grid"
    doc = invoke_json(
        "train",
        "--base-model",
        tiny_llm,
        "--train-data",
        train,
        "--eval-data",
        evaluation,
        "--init",
        "random,gaussian",
        "--learning-rates",
        "1e-3,3e-3",
        "--seeds",
        "0,1",
        "--eval-limit",
        "4",
        "-o",
        out,
        *FAST,
    )
    expected = {
        f"{init}_lr{lr}_seed{seed}"
        for init, lr, seed in product(("random", "gaussian"), ("0.001", "0.003"), (0, 1))
    }
    assert {a["name"] for a in doc["arms"]} == expected
    assert doc["grid"] == {
        "inits": ["random", "gaussian"],
        "learning_rates": [1e-3, 3e-3],
        "seeds": [0, 1],
    }
    for name in expected:
        record = json.loads((out / f"final_model_{name}" / "svdlora_run.json").read_text())
        assert f"_lr{record['learning_rate']:g}_seed{record['seed']}" in name
    for seed in (0, 1):
        orders = {
            (out / f"batch_order_{name}.json").read_text()
            for name in expected
            if name.endswith(f"seed{seed}")
        }
        assert len(orders) == 1  # every init and learning rate saw the same batches
    orders = [
        json.loads((out / f"batch_order_random_lr0.001_seed{s}.json").read_text()) for s in (0, 1)
    ]
    assert orders[0]["steps"] != orders[1]["steps"]  # and the seed does change them

    comparison = invoke_json("compare", str(out))
    grid = comparison["protocol"]["grid"]
    assert set(grid) == {"random", "gaussian"}
    assert all(len(entry["cells"]) == 2 and entry["chosen"] for entry in grid.values())
    assert comparison["protocol"]["budgets"]["equal"]
    assert Path(comparison["artifacts"]["lr_sensitivity"]).is_file()
