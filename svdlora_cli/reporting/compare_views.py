"""Renderings of a `compare` document: the seed's table (text and markdown) and the curves plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..training.init_registry import REFERENCE_INIT
from .columns import COMPARE_ARMS, SEED_METRICS, Column, flop_count, loss, pct, text_rows
from .plots import pyplot, save_figure
from .protocol_views import protocol_lines
from .text import fixed_width, heading

# Fractions (MFU too) compared in percentage points; losses, distances and throughput as a
# relative change.
_POINTS = ("energy_captured", "recovered_start", "recovered_end", "accuracy", "mfu")
_TEACHER = (
    "initial_loss",
    "final_loss",
    "final_eval_loss",
    "accuracy",
    "tokens_per_s",
    "tflops",
    "mfu",
)


def _improvement(arm: Mapping[str, Any], random: Mapping[str, Any], metric: Column) -> str:
    a, b = arm.get(metric.key), random.get(metric.key)
    if a is None or b is None:
        return "-"
    if metric.key in _POINTS:
        return pct(a - b, signed=True, unit=" pp")
    if b == 0:
        return "-"
    change = (a - b) / abs(b)
    if not metric.lower_is_better:
        return pct(change, signed=True)
    return f"{pct(abs(change))} {'↓' if change < 0 else '↑'}"


def table_arms(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The arms the seed's table shows: with a learning-rate grid, each init once, at the
    learning rate the protocol chose for it (named by its init); otherwise (or when no
    learning rate could be chosen: no eval loss) every arm."""
    arms = [a for a in doc["arms"] if a["arm"] != "teacher"]
    grid = (doc.get("protocol") or {}).get("grid") or {}
    chosen = {e["chosen_arm"]: init for init, e in grid.items() if e["chosen_arm"] is not None}
    if not chosen or not any(len(entry["cells"]) > 1 for entry in grid.values()):
        return arms
    return [{**a, "arm": chosen[a["arm"]]} for a in arms if a["arm"] in chosen]


def _grid_note(doc: Mapping[str, Any]) -> list[str]:
    students = sum(a["arm"] != "teacher" for a in doc["arms"])
    if len(table_arms(doc)) == students:
        return []
    return ["", "Each init at the learning rate chosen on held-out eval loss (grid below)."]


def seed_table(doc: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Metric rows x arm columns, plus 'vs random' columns: the seed's report table."""
    arms = table_arms(doc)
    teacher = next((a for a in doc["arms"] if a["arm"] == "teacher"), None)
    random = next((a for a in arms if a["arm"] == REFERENCE_INIT), None)
    header = ["Metric", *(a["arm"] for a in arms)]
    others = [a for a in arms if a["arm"] != REFERENCE_INIT] if random else []
    header += [f"{a['arm']} vs {REFERENCE_INIT}" for a in others]
    if teacher:
        header.append("teacher")
    rows = []
    for metric in SEED_METRICS:
        if all(a.get(metric.key) is None for a in arms) and metric.key != "steps_to_target":
            continue
        row = [metric.header, *(metric.cell(a) for a in arms)]
        row += [_improvement(a, random, metric) for a in others] if random else []
        if teacher:
            row.append(metric.cell(teacher) if metric.key in _TEACHER else "-")
        rows.append(row)
    return header, rows


def _detail_rows(doc: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    header, *rows = text_rows(COMPARE_ARMS, doc["arms"])
    return header, rows


def comparison_text(doc: Mapping[str, Any]) -> str:
    """comparison_report.txt: the seed's table, then every arm's detail and 95% CIs."""
    target = doc["target_loss"]
    lines = [
        *heading("Comparison of LoRA initialisations"),
        f"target loss: {'-' if target is None else f'{target:.4f}'} ({doc['target_source']})",
        "",
    ]
    header, rows = seed_table(doc)
    lines += fixed_width([header, *rows])
    lines += _grid_note(doc)
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
    if doc.get("protocol"):
        lines += protocol_lines(doc["protocol"])
    if doc.get("compute_matched"):
        lines += compute_matched_lines(doc["compute_matched"])
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
    lines += _grid_note(doc)
    lines += ["", "## Per arm (mean ± std over seeds)", ""]
    lines += table(*_detail_rows(doc))
    if doc.get("protocol"):
        lines += protocol_lines(doc["protocol"], markdown=True)
    if doc.get("compute_matched"):
        lines += compute_matched_lines(doc["compute_matched"], markdown=True)
    lines += ["", f"Gap recovered: {doc['recovered_basis']}.", ""]
    if doc.get("warnings"):
        lines += ["## Warnings (runs set apart, missing figures)", ""]
        lines += [f"- {note}" for note in doc["warnings"]] + [""]
    return "\n".join(lines)


def compute_matched_rows(section: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per verdict: mean FLOPs, the matched budget, both losses there, the paired
    difference with its 95% CI, and the verdicts at equal compute and at equal steps."""
    focus = section["focus"]
    header = [
        "vs",
        f"{focus} FLOPs",
        "other FLOPs",
        "matched at",
        f"{focus} loss",
        "other loss",
        "difference",
        "95% CI",
        "seeds",
        "verdict",
        "at equal steps",
    ]
    rows = []
    for v in section["verdicts"]:
        low, high, diff = v.get("ci_low"), v.get("ci_high"), v.get("mean_difference")
        rows.append(
            [
                v["against"],
                flop_count(v.get("focus_flops")),
                flop_count(v.get("other_flops")),
                flop_count(v.get("budget")),
                loss(v.get("focus_eval_loss")),
                loss(v.get("other_eval_loss")),
                "-" if diff is None else f"{diff:+.4f}",
                "-" if low is None else f"[{low:+.4f}, {high:+.4f}]",
                str(v.get("seeds", 0)),
                v["verdict"],
                v.get("equal_steps_verdict") or "-",
            ]
        )
    return header, rows


def _unmatched(section: Mapping[str, Any]) -> list[str]:
    """The pairs that could not be matched: why, and the figures reported instead."""
    lines = []
    for v in section["verdicts"]:
        for p in v.get("pairs", []):
            if p["matched"]:
                continue
            lines.append(
                f"{section['focus']} vs {v['against']}, seed {p['seed']}: not matched: "
                f"{p['why']}; instead, {p['cheaper']}'s final eval loss "
                f"{loss(p['cheaper_final_eval_loss'])} at {flop_count(p['cheaper_final_flops'])} "
                f"FLOPs against {p['costlier']}'s step-0 eval loss "
                f"{loss(p['costlier_initial_eval_loss'])} at "
                f"{flop_count(p['costlier_start_flops'])} FLOPs"
            )
        if v.get("unknown_seeds"):
            seeds = ", ".join(map(str, v["unknown_seeds"]))
            lines.append(f"{section['focus']} vs {v['against']}: FLOPs unknown for seeds {seeds}")
    return lines


def compute_matched_lines(section: Mapping[str, Any], markdown: bool = False) -> list[str]:
    """The compute-matched verdict table (text or markdown lines), its basis and the
    pairs that were not matched."""
    header, rows = compute_matched_rows(section)
    title = "Compute-matched verdict (equal total FLOPs: teacher + init + training)"
    notes = _unmatched(section)
    if not rows:
        notes.append(f"no verdict: no init to compare with {section['focus']}")
    if markdown:
        lines = ["", f"## {title}", ""]
        if rows:
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines += ["", f"Basis: {section['basis']}.", ""]
        return [*lines, *(f"- {n}" for n in notes), ""]
    lines = ["", title, "-" * 50]
    lines += fixed_width([header, *rows]) if rows else []
    return [*lines, f"basis: {section['basis']}", *notes]


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
        if ax.get_legend_handles_labels()[0]:  # no eval loss at all: an empty panel
            ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi)
