"""Plain-text reports (the seed's svd_report_rank{R}.txt) from result documents."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fixed_width(rows: list[list[str]]) -> list[str]:
    """Aligned plain-text columns; the first row is the header, underlined."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def _untargeted_lines(untargeted: list[Mapping[str, Any]], share: float) -> list[str]:
    lines = ["", "Changes a LoRA cannot capture (untargeted tensors)", "-" * 50]
    if not untargeted:
        return [*lines, "none: every changed tensor is a target"]
    lines.append(f"share of total ||dW||^2 outside the targets: {_pct(share)}")
    rows = [["tensor", "kind", "||dW||", "rel change"]]
    rows += [
        [r["name"], r["kind"], f"{r['delta_norm']:.4g}", _pct(r["rel_change"])] for r in untargeted
    ]
    return lines + fixed_width(rows)


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
        "SVD analysis of dW = W_tuned - W_base",
        "=" * 50,
        f"base:   {doc.get('base_model', '')}",
        f"tuned:  {doc.get('tuned_model', '')}",
        f"truncation: {header}; method: {doc['method']}",
        f"targets: {summary['count']} modules; "
        f"adapter parameters: {summary['adapter_parameters']:,}",
        "",
        "Summary",
        "-" * 50,
        f"mean energy captured:         {_pct(summary['mean_energy'])}",
        f"total energy captured:        {_pct(summary['total_energy'])}",
        f"lowest module energy:         {_pct(summary['min_energy'])}",
        f"mean relative error:          {_pct(summary['mean_rel_error'])}",
        f"mean effective rank:          {_num(summary['mean_effective_rank'])}",
        f"mean stable rank:             {_num(summary['mean_stable_rank'])}",
        f"mean rank for 90% energy:     {_num(summary['mean_rank_90'], 1)}",
        f"unchanged targets (dW = 0):   {summary['zero_modules']}",
        "",
        "By module type",
        "-" * 50,
    ]
    rows = [["type", "count", "mean energy", "total energy", "mean rel err", "mean eff rank"]]
    for name, s in summary["by_module_type"].items():
        rows.append(
            [
                name,
                str(s["count"]),
                _pct(s["mean_energy"]),
                _pct(s["total_energy"]),
                _pct(s["mean_rel_error"]),
                _num(s["mean_effective_rank"]),
            ]
        )
    lines += fixed_width(rows)
    lines += ["", "Attention vs MLP", "-" * 50]
    rows = [["group", "count", "mean energy", "total energy", "mean rank_90"]]
    for name, s in summary["by_group"].items():
        rows.append(
            [
                name,
                str(s["count"]),
                _pct(s["mean_energy"]),
                _pct(s["total_energy"]),
                _num(s["mean_rank_90"], 1),
            ]
        )
    lines += fixed_width(rows)
    lines += ["", "Per module", "-" * 50]
    rows = [
        [
            "module",
            "shape",
            "rank",
            "energy",
            "rel err",
            "eff rank",
            "stable",
            "r50",
            "r90",
            "r95",
            "r99",
        ]
    ]
    for m in doc["modules"]:
        rows.append(
            [
                m["name"],
                "x".join(map(str, m["shape"])),
                str(m["rank"]),
                _pct(m["energy"]),
                _pct(m["rel_error"]),
                _num(m["effective_rank"]),
                _num(m["stable_rank"]),
                *("-" if m[f"rank_{p}"] is None else str(m[f"rank_{p}"]) for p in (50, 90, 95, 99)),
            ]
        )
    lines += fixed_width(rows)
    lines += _untargeted_lines(list(doc["untargeted"]), summary["untargeted_share"])
    if doc.get("warnings"):
        lines += ["", "Warnings", "-" * 50, *doc["warnings"]]
    return "\n".join(lines) + "\n"


def delta_report(doc: Mapping[str, Any]) -> str:
    """Human-readable report of a `delta` result document."""
    s = doc["summary"]
    lines = [
        "Weight change dW = W_tuned - W_base",
        "=" * 50,
        f"base:   {doc.get('base_model', '')}",
        f"tuned:  {doc.get('tuned_model', '')}",
        f"targets: {s['targets']} ({s['changed_targets']} changed); "
        f"untargeted changed tensors: {s['untargeted_changed']}",
        f"total ||dW||_F: {s['total_delta_norm']:.6g}; on targets: {_pct(s['targeted_share'])}, "
        f"elsewhere: {_pct(s['untargeted_share'])}",
        "",
    ]
    for title, key in (("By module type", "by_module_type"), ("Attention vs MLP", "by_group")):
        lines += [title, "-" * 50]
        rows = [["name", "count", "||dW||", "rel change", "max |dW|", "share"]]
        for name, g in s[key].items():
            rows.append(
                [
                    name,
                    str(g["count"]),
                    f"{g['delta_norm']:.4g}",
                    _pct(g["rel_change"]),
                    f"{g['max_abs']:.3g}",
                    _pct(g["share_of_total"]),
                ]
            )
        lines += [*fixed_width(rows), ""]
    lines += ["Per target", "-" * 50]
    rows = [["tensor", "shape", "||W||", "||dW||", "rel change", "max |dW|"]]
    for r in doc["modules"]:
        rows.append(
            [
                r["name"],
                "x".join(map(str, r["shape"])),
                f"{r['base_norm']:.4g}",
                f"{r['delta_norm']:.4g}",
                _pct(r["rel_change"]),
                f"{r['max_abs']:.3g}",
            ]
        )
    lines += fixed_width(rows)
    lines += _untargeted_lines(list(doc["untargeted"]), s["untargeted_share"])
    if doc.get("warnings"):
        lines += ["", "Warnings", "-" * 50, *doc["warnings"]]
    return "\n".join(lines) + "\n"
