"""Renderings of the fair-comparison protocol: the learning-rate grid, the paired verdicts
(text and markdown lines) and lr_sensitivity.png."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..analysis.protocol import VERDICT_FIGURES
from .plots import pyplot, save_figure


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _lr(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def grid_rows(protocol: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """init × learning rate -> final eval loss, mean [95% CI] (n), the chosen one marked."""
    header = ["init", "learning rate", "final eval loss", "95% CI", "seeds", "chosen"]
    rows = []
    for init, entry in protocol["grid"].items():
        for cell in entry["cells"]:
            interval = (
                "-"
                if cell["ci_low"] is None
                else f"[{_number(cell['ci_low'])}, {_number(cell['ci_high'])}]"
            )
            rows.append(
                [
                    init,
                    _lr(cell["learning_rate"]),
                    _number(cell["mean"]),
                    interval,
                    str(cell["n"]),
                    "✓" if cell.get("chosen") else "",
                ]
            )
    return header, rows


def verdict_sentence(row: Mapping[str, Any], focus: str) -> str:
    """One verdict in words: the paired difference of each figure with its CI and seeds."""
    head = (
        f"{focus} (lr {_lr(row['focus_learning_rate'])}) vs {row['against']} "
        f"(lr {_lr(row['other_learning_rate'])}): {row['verdict']}"
    )
    if "figures" not in row:
        return head
    parts = []
    for figure, label in VERDICT_FIGURES:
        f = row["figures"][figure]
        if f["mean_difference"] is None:
            parts.append(f"{label}: no paired values")
            continue
        interval = (
            "no CI with one seed"
            if f["ci_low"] is None
            else f"95% CI [{f['ci_low']:+.4f}, {f['ci_high']:+.4f}]"
        )
        parts.append(f"{label} {f['mean_difference']:+.4f} ({interval}, n={f['seeds']})")
    return f"{head} on final eval loss; differences {focus} - {row['against']}: " + "; ".join(parts)


def protocol_lines(protocol: Mapping[str, Any], markdown: bool = False) -> list[str]:
    """The grid table and the verdicts, as text (fixed width) or markdown lines."""
    from .text import fixed_width

    header, rows = grid_rows(protocol)
    budget = protocol["budgets"]
    groups = budget["groups"]
    if budget["equal"] and groups:
        tokens = ", ".join(f"{g['tokens']} (seed {g['seed']})" for g in groups)
        budget_line = (
            f"Budgets: equal ({groups[0]['steps']} optimizer steps per run; real tokens per "
            f"run: {tokens})."
        )
    elif groups:
        budget_line = "BUDGETS DIFFER, arms are not ranked: " + "; ".join(
            f"{g['steps']} steps / {g['tokens']} tokens ({', '.join(g['runs'])})" for g in groups
        )
    else:
        budget_line = "Budgets: no student runs."
    title = "Learning-rate grid (selection on held-out eval loss only)"
    if markdown:
        lines = ["", f"## {title}", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines += ["", "## Verdict (paired by seed)", "", budget_line, ""]
        lines += [f"- {verdict_sentence(v, protocol['focus'])}" for v in protocol["verdicts"]]
        lines += [f"- {none}" for none in _no_verdict(protocol)]
        return [*lines, ""]
    lines = ["", title, "-" * 50, *fixed_width([header, *rows])]
    lines += ["", "Verdict (paired by seed)", "-" * 50, budget_line]
    lines += [verdict_sentence(v, protocol["focus"]) for v in protocol["verdicts"]]
    return lines + _no_verdict(protocol)


def _no_verdict(protocol: Mapping[str, Any]) -> list[str]:
    reason = protocol.get("no_verdict")
    return [f"No verdict: {reason}."] if reason and not protocol["verdicts"] else []


def lr_sensitivity_png(protocol: Mapping[str, Any], path: Path, dpi: int = 110) -> Path:
    """Final eval loss against learning rate, one line per init, with 95% CI bands."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (init, entry) in enumerate(protocol["grid"].items()):
        cells = [c for c in entry["cells"] if c["mean"] is not None and c["learning_rate"]]
        if not cells:
            continue
        x = [c["learning_rate"] for c in cells]
        ax.plot(x, [c["mean"] for c in cells], "-o", color=f"C{i}", label=init, ms=4)
        banded = [c for c in cells if c["ci_low"] is not None]
        if banded:
            ax.fill_between(
                [c["learning_rate"] for c in banded],
                [c["ci_low"] for c in banded],
                [c["ci_high"] for c in banded],
                color=f"C{i}",
                alpha=0.15,
            )
        if entry["chosen"] is not None:
            chosen = next(c for c in cells if c["learning_rate"] == entry["chosen"])
            ax.plot([chosen["learning_rate"]], [chosen["mean"]], "*", color=f"C{i}", ms=12)
    ax.set_xscale("log")
    ax.set(
        title="Final eval loss against learning rate (★ chosen, bands: 95% CI)",
        xlabel="learning rate",
        ylabel="final eval loss",
    )
    if ax.get_legend_handles_labels()[0]:  # no eval loss at all: an empty plot
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi)
