"""teacher_budget.png: final eval loss and gap recovered against the teacher steps behind
an svd init (`analysis.teacher_budget`), the teacher-free arms as dashed references."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .plots import pyplot, save_figure


def _label(point: Mapping[str, Any]) -> str:
    return (
        f"{point['init']} (lr {point['learning_rate']:g})"
        if point["learning_rate"]
        else point["init"]
    )


def teacher_budget_png(budget: Mapping[str, Any], path: Path, dpi: int = 110) -> Path:
    """Two panels over the teacher's steps (log axis): final eval loss with 95% CI bars, and
    the eval-loss gap to the teacher recovered at the end."""
    plt = pyplot()
    fig, (loss_ax, gap_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, (family, points) in enumerate(budget["families"].items()):
        x = [p["teacher_step"] for p in points]
        y = [p["final_eval_loss"] for p in points]
        low = [p["final_eval_loss"] - p["ci_low"] if p["ci_low"] is not None else 0 for p in points]
        high = [
            p["ci_high"] - p["final_eval_loss"] if p["ci_high"] is not None else 0 for p in points
        ]
        loss_ax.errorbar(x, y, yerr=[low, high], fmt="-o", color=f"C{i}", capsize=3, label=family)
        for p in points:
            loss_ax.annotate(
                p["init"],
                (p["teacher_step"], p["final_eval_loss"]),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
        gaps = [
            (p["teacher_step"], p["recovered_end"])
            for p in points
            if p["recovered_end"] is not None
        ]
        if gaps:
            gap_ax.plot(*zip(*gaps, strict=True), "-o", color=f"C{i}", label=family)
    offset = len(budget["families"])
    for j, ref in enumerate(budget["references"]):
        color = f"C{offset + j}"
        if ref["final_eval_loss"] is not None:
            loss_ax.axhline(ref["final_eval_loss"], ls="--", lw=1, color=color, label=_label(ref))
        if ref["recovered_end"] is not None:
            gap_ax.axhline(ref["recovered_end"], ls="--", lw=1, color=color, label=_label(ref))
    for ax in (loss_ax, gap_ax):
        ax.set_xscale("log")
        ax.set_xlabel("teacher steps behind the init (log)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    loss_ax.set(title="Final eval loss (bars: 95% CI over seeds)", ylabel="final eval loss")
    gap_ax.set(title="Gap to the teacher recovered at the end", ylabel="share of the gap")
    fig.suptitle("What the teacher buys: students at their chosen learning rates", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi)
