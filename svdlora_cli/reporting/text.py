"""Plain-text reports (the seed's svd_report_rank{R}.txt) from result documents."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .columns import (
    DELTA_GROUPS,
    DELTA_TARGETS_REPORT,
    DELTA_TOTALS,
    SVD_GROUPS_REPORT,
    SVD_MODULES_REPORT,
    SVD_SUMMARY_REPORT,
    SVD_TYPES_REPORT,
    UNTARGETED,
    Align,
    Column,
    named,
    pct,
    text_rows,
)


def fixed_width(rows: list[list[str]], aligns: Sequence[Align] | None = None) -> list[str]:
    """Aligned plain-text columns; the first row is the header, underlined.

    Without `aligns` the first column is left-aligned and the others right-aligned.
    """
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    if aligns is None:
        aligns = ["left", *(["right"] * (len(widths) - 1))]
    lines = []
    for n, row in enumerate(rows):
        lines.append(
            "  ".join(
                c.ljust(w) if a == "left" else c.rjust(w)
                for c, w, a in zip(row, widths, aligns, strict=True)
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def column_lines(columns: Sequence[Column], records: Iterable[Mapping[str, Any]]) -> list[str]:
    """A column specification over records, as aligned plain text."""
    return fixed_width(text_rows(columns, records), [c.align for c in columns])


def _untargeted_lines(untargeted: list[Mapping[str, Any]], share: float) -> list[str]:
    lines = ["", "Changes a LoRA cannot capture (untargeted tensors)", "-" * 50]
    if not untargeted:
        return [*lines, "none: every changed tensor is a target"]
    lines.append(f"share of total ||dW||^2 outside the targets: {pct(share)}")
    return lines + column_lines(UNTARGETED, untargeted)


def heading(title: str, pair: Mapping[str, Any] | None = None) -> list[str]:
    """A report's first lines: its title, underlined, then (given a result document) the
    model pair and its dtypes."""
    lines = [title, "=" * 50]
    if pair is not None:
        lines += [
            f"base:   {pair.get('base_model', '')}",
            f"tuned:  {pair.get('tuned_model', '')}",
            *dtype_lines(pair),
        ]
    return lines


def dtype_lines(doc: Mapping[str, Any]) -> list[str]:
    """One short line: the targets' stored dtypes, and under mixed dtypes the policy."""
    d = doc.get("dtypes")
    if not d:
        return []

    def counts(side: Mapping[str, int]) -> str:
        return ", ".join(f"{dtype} x{n}" for dtype, n in side.items())

    line = f"dtypes: base {counts(d['base'])}; teacher {counts(d['teacher'])}"
    if d.get("mixed_targets"):
        line += (
            f"; --dtype-policy {d['policy']}; the base's rounding to the teacher's dtype is "
            f"{pct(d['rounding_share'])} of raw ||dW||^2"
        )
    for side, how in (d.get("quantized") or {}).items():
        line += f"; {side} {how}"
    return [line]


def svd_report(doc: Mapping[str, Any]) -> str:
    """Human-readable report of an `svd` result document."""
    summary = doc["summary"]
    rank = doc["rank"]
    header = (
        f"rank {rank}"
        if rank is not None
        else f"energy >= {doc['energy_target']} (per-module rank)"
    )
    lines = [
        *heading("SVD analysis of dW = W_tuned - W_base", doc),
        f"truncation: {header}; method: {doc['method']}",
        f"targets: {summary['count']} modules; "
        f"adapter parameters: {summary['adapter_parameters']:,}",
        "",
        "Summary",
        "-" * 50,
        *(f"{c.header + ':':<30}{c.cell(summary)}" for c in SVD_SUMMARY_REPORT),
        "",
        "By module type",
        "-" * 50,
    ]
    lines += column_lines(SVD_TYPES_REPORT, named(summary["by_module_type"]))
    lines += ["", "Attention vs MLP", "-" * 50]
    lines += column_lines(SVD_GROUPS_REPORT, named(summary["by_group"]))
    lines += ["", "Per module", "-" * 50]
    lines += column_lines(SVD_MODULES_REPORT, doc["modules"])
    lines += _untargeted_lines(list(doc["untargeted"]), summary["untargeted_share"])
    if doc.get("verification"):
        lines += ["", "Verification", "-" * 50]
        lines += fixed_width([["check", "result", "detail"], *verification_rows(doc)], VERIFY_ALIGN)
    if doc.get("warnings"):
        lines += ["", "Warnings", "-" * 50, *doc["warnings"]]
    return "\n".join(lines) + "\n"


VERIFY_ALIGN: list[Align] = ["left", "left", "left"]


def verification_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    """(check, result, detail) of a document's verification: one source for every renderer."""
    v = doc.get("verification") or doc
    rows = []
    structural = v.get("structural") or {}
    carried = v.get("carried_from")  # adapters/sibling.py: PEFT checked a sibling at that rank
    if structural.get("ok"):
        detail = f"{structural['modules']} adapter modules, each wrapped by PEFT with its shape"
        if carried:
            detail = (
                f"carried: PEFT wrapped each of the {structural['modules']} modules of this "
                f"run's rank-{carried['rank']} adapter, whose format this one has"
            )
        rows.append(["structural", "ok", detail])
        deltas = structural.get("deltas")
        if deltas:
            whose = "this file's B @ A" if carried else "PEFT's delta"
            rows.append(
                [
                    "module deltas",
                    "ok",
                    f"{whose} of each of {deltas['checked']} modules vs the rank-r "
                    f"delta: max {deltas['max_rel_diff']:.2e} relative, Frobenius "
                    f"(tolerance {deltas['tolerance']:g})",
                ]
            )
    elif structural:
        rows.append(["structural", "skipped", str(structural.get("skipped", ""))])
    probe = v.get("probe")
    if probe:
        rows.append(
            [
                "probe",
                "ok" if probe["ok"] else "FAILED",
                f"PEFT vs direct merge: max |logit diff| {probe['max_abs_diff']:.2e} "
                f"({probe['rel_diff']:.2e} relative, tolerance {probe['tolerance']:g}); "
                f"adapter changes logits by up to {probe['max_abs_change']:.3g}",
            ]
        )
    elif "probe" in v:
        rows.append(["probe", "off", str(v.get("probe_reason") or "--no-probe")])
    gap = v.get("gap")
    if gap:
        closed = gap["gap_closed"]
        rows.append(
            [
                "teacher gap",
                "n/a" if closed is None else f"{pct(closed)} closed",
                f"KL(teacher || base) {gap['kl_teacher_base']:.4g} -> "
                f"KL(teacher || base + adapter) {gap['kl_teacher_adapted']:.4g} "
                f"over {gap['tokens']} answer tokens of {gap['rows']} rows",
            ]
        )
    return rows


def delta_report(doc: Mapping[str, Any]) -> str:
    """Human-readable report of a `delta` result document."""
    s = doc["summary"]
    lines = [
        *heading("Weight change dW = W_tuned - W_base", doc),
        f"targets: {s['targets']} ({s['changed_targets']} changed); "
        f"untargeted changed tensors: {s['untargeted_changed']}",
        "; ".join(f"{c.header}: {c.cell(s)}" for c in DELTA_TOTALS),
        "",
    ]
    for title, key in (("By module type", "by_module_type"), ("Attention vs MLP", "by_group")):
        lines += [title, "-" * 50]
        lines += [*column_lines(DELTA_GROUPS, named(s[key])), ""]
    lines += ["Per target", "-" * 50]
    lines += column_lines(DELTA_TARGETS_REPORT, doc["modules"])
    lines += _untargeted_lines(list(doc["untargeted"]), s["untargeted_share"])
    if doc.get("warnings"):
        lines += ["", "Warnings", "-" * 50, *doc["warnings"]]
    return "\n".join(lines) + "\n"
