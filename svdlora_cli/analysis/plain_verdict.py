"""The demo's plain-language reading: did the seed's two hypotheses hold in this run?"""

from __future__ import annotations

from typing import Any

from ..training.init_registry import FOCUS_INIT, REFERENCE_INIT


def _low_rank_reading(total: float, rank: int) -> str:
    share = f"{100 * total:.0f}%"
    if total >= 0.85:
        return f"held: rank {rank} keeps {share} of dW's energy (the seed expected more than 85%)"
    if total >= 0.5:
        return (
            f"held only in part: rank {rank} keeps {share} of dW's energy, short of the "
            "seed's 85%, so dW is concentrated but not strictly low rank"
        )
    return f"did not hold: rank {rank} keeps only {share} of dW's energy"


def _head_start(svd: dict[str, Any], other: dict[str, Any]) -> str:
    """A description, not a verdict: where the two arms started and ended (means over seeds)."""
    text = (
        f"The svd arm started at a training loss of {svd['initial_loss']:.3f} against "
        f"{other['initial_loss']:.3f}"
    )
    if svd.get("final_eval_loss") is not None and other.get("final_eval_loss") is not None:
        text += (
            f" and ended at an eval loss of {svd['final_eval_loss']:.3f} against "
            f"{other['final_eval_loss']:.3f}"
        )
    recovered = svd.get("recovered_start")
    if recovered is not None:
        text += (
            f"; its step-0 start already recovers {100 * recovered:.0f}% of the gap to the teacher"
        )
    return text + "."


def _verdict_reading(row: dict[str, Any]) -> str:
    against = row["against"]
    if "figures" not in row:
        return f"Against {against}: {row['verdict']}."
    f = row["figures"]["final_eval_loss"]
    seeds = row["seeds"]
    if f["ci_low"] is None:
        interval = "no confidence interval with one seed, so no claim either way"
    else:
        interval = f"95% CI [{f['ci_low']:+.3f}, {f['ci_high']:+.3f}]"
    return (
        f"Against {against} (each at its own best learning rate, "
        f"{row['focus_learning_rate']:g} vs {row['other_learning_rate']:g}), paired over "
        f"{seeds} seed{'s' if seeds != 1 else ''}: final eval loss differs by "
        f"{f['mean_difference']:+.3f} ({interval}): {row['verdict']}."
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _compute_reading(row: dict[str, Any]) -> str:
    """One init's verdict at equal total compute (teacher + init + training FLOPs)."""
    against, verdict = row["against"], row["verdict"]
    if row.get("mean_difference") is not None and row.get("seeds"):
        interval = (
            f"95% CI [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"
            if row.get("ci_low") is not None
            else "no confidence interval with one seed"
        )
        return (
            f"against {against}, at a matched budget of {row['budget']:.3g} FLOPs, eval loss "
            f"differs by {row['mean_difference']:+.3f} ({interval}, {row['seeds']} "
            f"seed{'s' if row['seeds'] != 1 else ''}): {verdict}"
        )
    unmatched = [p for p in row.get("pairs", []) if not p.get("matched")]
    if not unmatched:
        return f"against {against}: {verdict}"
    cheap = _mean([p["cheaper_final_eval_loss"] for p in unmatched])
    dear = _mean([p["costlier_initial_eval_loss"] for p in unmatched])
    first = unmatched[0]
    return (
        f"against {against}: {verdict}; over {len(unmatched)} "
        f"seed{'s' if len(unmatched) != 1 else ''} {first['cheaper']}'s whole run ends at an "
        f"eval loss of {cheap:.3f}, where {first['costlier']} starts at {dear:.3f}"
    )


def _compute_matched_reading(comparison: dict[str, Any]) -> str:
    matched = comparison.get("compute_matched") or {}
    rows = matched.get("verdicts") or []
    if not rows:
        return ""
    return (
        "At equal total compute (the teacher's FLOPs up to the checkpoint behind an svd init, "
        "the init's and the training's): " + "; ".join(_compute_reading(r) for r in rows) + "."
    )


def reading(spectra: dict[str, Any], comparison: dict[str, Any], rank: int) -> str:
    """A plain-language paragraph on whether the two hypotheses held in this run.

    Hypothesis 2 rests on the paired verdict of the protocol and nothing else: a
    difference is claimed only where its 95% CI over seeds excludes 0.
    """
    first = f"Hypothesis 1 (dW is low rank) {_low_rank_reading(spectra['total_energy'], rank)}."
    protocol = comparison.get("protocol") or {}
    verdicts = {v["against"]: v for v in protocol.get("verdicts", [])}
    if REFERENCE_INIT not in verdicts:
        return (
            f"{first} Hypothesis 2 needs both a {REFERENCE_INIT} and an {FOCUS_INIT} arm with "
            "eval losses."
        )
    random = verdicts[REFERENCE_INIT]
    held = {
        "better": "held",
        "worse": "did not hold (svd ended worse)",
    }.get(random["verdict"], "is not supported: no difference detected")
    arms = {a["arm"]: a for a in comparison["arms"]}
    chosen = {init: entry["chosen_arm"] for init, entry in protocol["grid"].items()}
    description = _head_start(arms[chosen[FOCUS_INIT]], arms[chosen[REFERENCE_INIT]])
    others = " ".join(_verdict_reading(v) for k, v in verdicts.items() if k != REFERENCE_INIT)
    return (
        f"{first} Hypothesis 2 (an SVD-initialised LoRA ends closer to the teacher than a "
        f"standard LoRA) {held} in this run, at equal student steps. "
        f"{_verdict_reading(random)} {description} {others}".rstrip()
        + f" {_compute_matched_reading(comparison)}".rstrip()
        + " Learning rates were chosen per arm on held-out eval loss; one small model."
    )
