"""The demo's reading states the verdict at equal steps and at equal total compute."""

from __future__ import annotations

from svdlora_cli.analysis.plain_verdict import reading

SPECTRA = {"total_energy": 0.6}


def _comparison(compute_rows: list[dict]) -> dict:
    arms = [
        {
            "arm": "svd_lr0.0001",
            "initial_loss": 0.6,
            "final_eval_loss": 0.55,
            "recovered_start": 0.8,
        },
        {"arm": "random_lr0.001", "initial_loss": 1.4, "final_eval_loss": 0.88},
    ]
    figures = {"final_eval_loss": {"mean_difference": -0.33, "ci_low": -0.42, "ci_high": -0.23}}
    return {
        "arms": arms,
        "protocol": {
            "grid": {
                "svd": {"chosen_arm": "svd_lr0.0001"},
                "random": {"chosen_arm": "random_lr0.001"},
            },
            "verdicts": [
                {
                    "against": "random",
                    "verdict": "better",
                    "seeds": 3,
                    "figures": figures,
                    "focus_learning_rate": 1e-4,
                    "other_learning_rate": 1e-3,
                }
            ],
        },
        "compute_matched": {"verdicts": compute_rows},
    }


def test_reading_gives_both_verdicts_with_their_seeds():
    matched = {
        "against": "random",
        "verdict": "worse",
        "budget": 2.5e15,
        "mean_difference": 0.12,
        "ci_low": 0.05,
        "ci_high": 0.19,
        "seeds": 3,
        "pairs": [],
    }
    text = reading(SPECTRA, _comparison([matched]), 16)
    assert "at equal student steps" in text and "held in this run" in text
    assert "paired over 3 seeds" in text
    assert "At equal total compute" in text
    assert "budget of 2.5e+15 FLOPs" in text and "+0.120" in text and "3 seeds): worse" in text


def test_reading_explains_an_unmatched_pair_with_its_losses():
    pair = {
        "matched": False,
        "cheaper": "random",
        "costlier": "svd",
        "cheaper_final_eval_loss": 0.9,
        "costlier_initial_eval_loss": 0.6,
    }
    row = {
        "against": "random",
        "verdict": "not matched: svd's teacher and init alone (4e+15 FLOPs) cost more than "
        "random's whole run (2e+15 FLOPs): 2x",
        "mean_difference": None,
        "seeds": 0,
        "pairs": [pair, dict(pair, cheaper_final_eval_loss=0.8)],
    }
    text = reading(SPECTRA, _comparison([row]), 16)
    assert "not matched: svd's teacher and init alone" in text
    assert "over 2 seeds random's whole run ends at an eval loss of 0.850" in text
    assert "where svd starts at 0.600" in text
    assert "At equal total compute" not in reading(SPECTRA, _comparison([]), 16)
