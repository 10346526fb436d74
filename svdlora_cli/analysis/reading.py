"""The demo's plain-language reading: did the seed's two hypotheses hold in this run?"""

from __future__ import annotations

from typing import Any


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


def _speed_reading(svd: dict[str, Any], random: dict[str, Any]) -> str:
    mine, theirs = svd.get("steps_to_target"), random.get("steps_to_target")
    if mine is not None and theirs is not None:
        return f"it reached the target loss in {mine:.0f} steps against {theirs:.0f}"
    if mine is not None:
        return f"it reached the target loss in {mine:.0f} steps while random never did"
    if theirs is not None:
        return "it never reached the target loss while random did"
    return "neither arm reached the target loss"


def _control_reading(subspace: dict[str, Any] | None, random: dict[str, Any]) -> str:
    if subspace is None:
        return ""
    better = subspace["final_loss"] < random["final_loss"]
    verdict = "the directions alone help" if better else "the gain comes from the head start"
    return (
        f" The subspace control (the teacher's directions, zero start) ended "
        f"{'below' if better else 'above'} random ({subspace['final_loss']:.3f} vs "
        f"{random['final_loss']:.3f}), so {verdict}."
    )


def reading(spectra: dict[str, Any], comparison: dict[str, Any], rank: int) -> str:
    """A plain-language paragraph on whether the two hypotheses held in this run."""
    first = f"Hypothesis 1 (dW is low rank) {_low_rank_reading(spectra['total_energy'], rank)}."
    arms = {a["arm"]: a for a in comparison["arms"]}
    svd, random = arms.get("svd"), arms.get("random")
    if not (svd and random):
        return f"{first} Hypothesis 2 needs both a random and an svd arm."
    held = (
        svd["initial_loss"] < random["initial_loss"] and svd["final_loss"] <= random["final_loss"]
    )
    start = "lower" if svd["initial_loss"] < random["initial_loss"] else "no lower"
    end = "lower" if svd["final_loss"] < random["final_loss"] else "no lower"
    evals = svd.get("final_eval_loss"), random.get("final_eval_loss")
    eval_text = ""
    if evals[0] is not None and evals[1] is not None:
        side = "lower" if evals[0] < evals[1] else "higher"
        eval_text = f", with a {side} final eval loss ({evals[0]:.3f} vs {evals[1]:.3f})"
    recovered = svd.get("recovered_start")
    recovered_text = (
        ""
        if recovered is None
        else f" At step 0 the SVD start already recovers {100 * recovered:.0f}% of the "
        "base-to-teacher eval-loss gap."
    )
    return (
        f"{first} Hypothesis 2 (an SVD-initialised LoRA trains faster and ends closer to the "
        f"teacher) {'held' if held else 'did not hold'} in this run: the svd arm started {start} "
        f"({svd['initial_loss']:.3f} vs {random['initial_loss']:.3f}) and ended {end} "
        f"({svd['final_loss']:.3f} vs {random['final_loss']:.3f}){eval_text}; "
        f"{_speed_reading(svd, random)}.{recovered_text}"
        f"{_control_reading(arms.get('subspace'), random)} "
        "One run with one seed on a small model: treat these as indications, not results."
    )
