"""Renderings of a `compare` document: the seed's table (text and markdown) and the curves plot."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .plots import pyplot, save_figure
from .text import fixed_width

Row = tuple[str, str, Callable[[Mapping[str, Any]], str], bool]


def _loss(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _steps(arm: Mapping[str, Any]) -> str:
    value = arm.get("steps_to_target")
    never = arm.get("never_reached") or 0
    if value is None:
        return "never" if never else "-"
    text = f"{value:.0f}" if arm["n_runs"] == 1 else f"{value:.1f}"
    return text + (f" ({never} never)" if never else "")


# (label, key, formatter, lower is better)
SEED_ROWS: Sequence[Row] = (
    ("Initial loss", "initial_loss", lambda a: _loss(a["initial_loss"]), True),
    ("Final loss", "final_loss", lambda a: _loss(a["final_loss"]), True),
    ("Final eval loss", "final_eval_loss", lambda a: _loss(a.get("final_eval_loss")), True),
    ("Steps to target", "steps_to_target", _steps, True),
    ("Energy captured", "energy_captured", lambda a: _pct(a.get("energy_captured")), False),
    ("Gap recovered at start", "recovered_start", lambda a: _pct(a.get("recovered_start")), False),
    ("Gap recovered at end", "recovered_end", lambda a: _pct(a.get("recovered_end")), False),
    ("Distance to teacher", "relative_distance", lambda a: _pct(a.get("relative_distance")), True),
    ("Accuracy (exact match)", "accuracy", lambda a: _pct(a.get("accuracy")), False),
)


def _improvement(
    arm: Mapping[str, Any], random: Mapping[str, Any], key: str, lower_better: bool
) -> str:
    a, b = arm.get(key), random.get(key)
    if a is None or b is None:
        return "-"
    if key in ("energy_captured", "recovered_start", "recovered_end", "accuracy"):
        return f"{100 * (a - b):+.1f} pp"
    if b == 0:
        return "-"
    change = 100 * (b - a) / abs(b)
    arrow = "↓" if change > 0 else "↑"
    return f"{abs(change):.1f}% {arrow}" if lower_better else f"{change:+.1f}%"


def seed_table(doc: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Metric rows x arm columns, plus 'vs random' columns: the seed's report table."""
    arms = [a for a in doc["arms"] if a["arm"] != "teacher"]
    teacher = next((a for a in doc["arms"] if a["arm"] == "teacher"), None)
    random = next((a for a in arms if a["arm"] == "random"), None)
    header = ["Metric", *(a["arm"] for a in arms)]
    others = [a for a in arms if a["arm"] != "random"] if random else []
    header += [f"{a['arm']} vs random" for a in others]
    if teacher:
        header.append("teacher")
    rows = []
    for label, key, fmt, lower in SEED_ROWS:
        if all(a.get(key) is None for a in arms) and key != "steps_to_target":
            continue
        row = [label, *(fmt(a) for a in arms)]
        row += [_improvement(a, random, key, lower) for a in others] if random else []
        if teacher:
            row.append(
                fmt(teacher)
                if key in ("initial_loss", "final_loss", "final_eval_loss", "accuracy")
                else "-"
            )
        rows.append(row)
    return header, rows


def _detail_rows(doc: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = [
        "arm",
        "runs",
        "initial",
        "final",
        "min",
        "eval end",
        "AUC",
        "gap to teacher",
        "oscillation",
    ]
    rows = []
    for a in doc["arms"]:

        def pm(
            key: str, fmt: Callable[[float | None], str] = _loss, arm: Mapping[str, Any] = a
        ) -> str:
            spread = arm["spread"].get(key, {})
            text = fmt(arm.get(key))
            return text + (f" ± {fmt(spread['std'])}" if spread.get("std") is not None else "")

        gap = a.get("gap_to_teacher_pct")
        rows.append(
            [
                a["arm"],
                str(a["n_runs"]),
                pm("initial_loss"),
                pm("final_loss"),
                pm("min_loss"),
                pm("final_eval_loss"),
                "-" if a.get("auc") is None else f"{a['auc']:.2f}",
                "-" if gap is None else f"{gap:+.1f}%",
                "-" if a.get("oscillation") is None else f"{a['oscillation']:.4f}",
            ]
        )
    return header, rows


def comparison_text(doc: Mapping[str, Any]) -> str:
    """comparison_report.txt: the seed's table, then every arm's detail and 95% CIs."""
    target = doc["target_loss"]
    lines = [
        "Comparison of LoRA initialisations",
        "=" * 50,
        f"target loss: {'-' if target is None else f'{target:.4f}'} ({doc['target_source']})",
        "",
    ]
    header, rows = seed_table(doc)
    lines += fixed_width([header, *rows])
    lines += ["", "Per arm (mean ± std over seeds)", "-" * 50]
    detail_header, detail_rows = _detail_rows(doc)
    lines += fixed_width([detail_header, *detail_rows])
    multi = [a for a in doc["arms"] if a["n_runs"] > 1]
    if multi:
        lines += ["", "95% confidence intervals of the mean", "-" * 50]
        for a in multi:
            for key in ("final_loss", "final_eval_loss", "steps_to_target"):
                s = a["spread"][key]
                if s["ci_low"] is not None:
                    interval = f"[{s['ci_low']:.4f}, {s['ci_high']:.4f}]"
                    lines.append(f"{a['arm']:>12} {key:<18} {interval} (n={s['n']})")
    lines += ["", f"gap recovered: {doc['recovered_basis']}"]
    for note in doc.get("warnings", []):
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"


def comparison_markdown(doc: Mapping[str, Any]) -> str:
    """comparison_report.md: the same tables as GitHub markdown."""

    def table(header: list[str], rows: list[list[str]]) -> list[str]:
        return [
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows),
        ]

    target = doc["target_loss"]
    lines = [
        "# Comparison of LoRA initialisations",
        "",
        f"Target loss: {'-' if target is None else f'{target:.4f}'} ({doc['target_source']}).",
        "",
    ]
    lines += table(*seed_table(doc))
    lines += ["", "## Per arm (mean ± std over seeds)", ""]
    lines += table(*_detail_rows(doc))
    lines += ["", f"Gap recovered: {doc['recovered_basis']}.", ""]
    return "\n".join(lines)


def comparison_png(
    curves: Mapping[str, Sequence[Mapping[str, Sequence[float]]]],
    doc: Mapping[str, Any],
    path: Path,
    log_y: bool = False,
    dpi: int = 110,
) -> Path:
    """Train and eval loss per arm (mean with a min-max band over seeds) and the target line."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for i, (arm, runs) in enumerate(curves.items()):
        color = "k" if arm == "teacher" else f"C{i}"
        for ax, xs, ys in ((axes[0], "steps", "loss"), (axes[1], "eval_steps", "eval_loss")):
            usable = [r for r in runs if len(r[ys]) > 0]
            if not usable:
                continue
            n = min(len(r[ys]) for r in usable)
            x = np.asarray(usable[0][xs][:n])
            y = np.asarray([r[ys][:n] for r in usable])
            style = "--" if arm == "teacher" else "-"
            ax.plot(
                x,
                y.mean(axis=0),
                style,
                color=color,
                label=f"{arm} (n={len(usable)})",
                lw=1.5,
                marker="o" if ys == "eval_loss" and n < 30 else None,
                ms=3,
            )
            if len(usable) > 1:
                ax.fill_between(x, y.min(axis=0), y.max(axis=0), color=color, alpha=0.15)
    target = doc.get("target_loss")
    for ax, title in ((axes[0], "Training loss"), (axes[1], "Eval loss")):
        if target is not None:
            ax.axhline(target, color="grey", ls=":", lw=1, label=f"target {target:.3f}")
        ax.set(title=title, xlabel="step", ylabel="loss")
        if log_y:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi)
