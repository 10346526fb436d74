"""rich tables for the terminal, from the same result documents as the text reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 16) -> str:
    """Unicode sparkline of the leading singular values, scaled by the largest."""
    head = [float(v) for v in values[:width]]
    if not head or head[0] <= 0:
        return "·" * min(width, max(1, len(head)))
    top = head[0]
    return "".join(BLOCKS[min(len(BLOCKS) - 1, round(v / top * (len(BLOCKS) - 1)))] for v in head)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _rel(value: float | None) -> str:
    """Relative changes span orders of magnitude: three significant digits."""
    return "-" if value is None else f"{100 * value:.3g}%"


def _energy_style(value: float) -> str:
    return "green" if value >= 0.9 else "yellow" if value >= 0.5 else "red"


def svd_table(doc: Mapping[str, Any]) -> Group:
    """Per-module spectra grouped by module type, then the summary line."""
    rank = doc["rank"]
    title = (
        f"dW spectra at rank {rank}"
        if rank is not None
        else f"dW spectra at energy >= {doc['energy_target']}"
    )
    table = Table(title=title, title_justify="left", header_style="bold")
    for column, justify in (
        ("module", "left"),
        ("shape", "right"),
        ("r", "right"),
        ("energy", "right"),
        ("rel err", "right"),
        ("eff rank", "right"),
        ("r90", "right"),
        ("spectrum (top 16)", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for m in doc["modules"]:
        by_type.setdefault(m["module_type"], []).append(m)
    for kind, rows in by_type.items():
        stats = doc["summary"]["by_module_type"][kind]
        table.add_row(
            Text(f"{kind} (mean {_pct(stats['mean_energy'])})", style="bold cyan"),
            end_section=False,
        )
        for m in rows:
            table.add_row(
                m["name"],
                "x".join(map(str, m["shape"])),
                str(m["rank"]),
                Text(_pct(m["energy"]), style=_energy_style(m["energy"])),
                _pct(m["rel_error"]),
                "-" if m["effective_rank"] is None else f"{m['effective_rank']:.1f}",
                "-" if m["rank_90"] is None else str(m["rank_90"]),
                sparkline(m["singular_values"]),
            )
        table.add_section()
    s = doc["summary"]
    footer = Text.assemble(
        ("mean energy ", "bold"),
        _pct(s["mean_energy"]),
        ("   total energy ", "bold"),
        _pct(s["total_energy"]),
        ("   outside targets ", "bold"),
        _pct(s["untargeted_share"]),
        ("   cache ", "bold"),
        f"{doc['cache']['hits']} hits / {doc['cache']['misses']} misses",
    )
    return Group(table, footer, *_artifact_lines(doc))


def _artifact_lines(doc: Mapping[str, Any]) -> list[Text]:
    artifacts = doc.get("artifacts") or {}
    return [Text(f"{name}: {path}", style="dim") for name, path in artifacts.items()]


def delta_table(doc: Mapping[str, Any]) -> Group:
    """Change per module type and group, then the untargeted tensors."""
    s = doc["summary"]
    parts: list[Any] = []
    for title, key in (
        ("dW by module type", "by_module_type"),
        ("dW: attention vs MLP", "by_group"),
    ):
        table = Table(title=title, title_justify="left", header_style="bold")
        for column in ("name", "count", "||dW||", "rel change", "max |dW|", "share of ||dW||²"):
            table.add_column(column, justify="left" if column == "name" else "right")
        for name, g in s[key].items():
            table.add_row(
                name,
                str(g["count"]),
                f"{g['delta_norm']:.4g}",
                _rel(g["rel_change"]),
                f"{g['max_abs']:.3g}",
                _pct(g["share_of_total"]),
            )
        parts.append(table)
    other = Table(
        title="Changed tensors a LoRA cannot capture", title_justify="left", header_style="bold"
    )
    for column in ("tensor", "kind", "||dW||", "rel change", "share of ||dW||²"):
        other.add_column(column, justify="left" if column in ("tensor", "kind") else "right")
    total_sq = s["total_delta_norm"] ** 2
    for r in doc["untargeted"]:
        other.add_row(
            r["name"],
            r["kind"],
            f"{r['delta_norm']:.4g}",
            _rel(r["rel_change"]),
            _pct(r["delta_sq"] / total_sq if total_sq else 0.0),
        )
    if not doc["untargeted"]:
        other.add_row("none", "-", "-", "-", "-")
    parts.append(other)
    parts.append(
        Text.assemble(
            ("total ||dW|| ", "bold"),
            f"{s['total_delta_norm']:.6g}",
            ("   on targets ", "bold"),
            _pct(s["targeted_share"]),
            ("   elsewhere ", "bold"),
            _pct(s["untargeted_share"]),
        )
    )
    return Group(*parts, *_artifact_lines(doc))


def cache_table(entries: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(title="svdlora cache entries", title_justify="left", header_style="bold")
    for column in ("kind", "tensor", "k", "method", "bytes", "key"):
        table.add_column(column)
    for e in entries:
        table.add_row(
            e["kind"],
            str(e.get("tensor", "")),
            str(e.get("k", "")),
            str(e.get("method", "")),
            str(e.get("bytes", "")),
            e["key"][:12],
        )
    return table


def training_table(doc: Mapping[str, Any]) -> Group:
    """One row per trained arm: start and end losses, eval loss and throughput."""
    table = Table(title="Training", title_justify="left", header_style="bold")
    for column in (
        "arm",
        "initial loss",
        "final loss",
        "min loss",
        "eval start",
        "eval end",
        "steps",
        "tokens/s",
    ):
        table.add_column(column, justify="left" if column == "arm" else "right")

    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    for arm in doc["arms"]:
        table.add_row(
            arm["name"],
            num(arm["initial_loss"]),
            num(arm["final_loss"]),
            num(arm["min_loss"]),
            num(arm["initial_eval_loss"]),
            num(arm["final_eval_loss"]),
            str(arm["steps"]),
            f"{arm['tokens_per_s']:.0f}",
        )
    paths = [
        Text(f"{k}: {v}", style="dim") for arm in doc["arms"] for k, v in arm["artifacts"].items()
    ]
    return Group(table, *paths)


def compare_table(doc: Mapping[str, Any]) -> Group:
    """The seed's comparison table (metric rows, arm columns, 'vs random' columns)."""
    from .compare_views import seed_table

    header, rows = seed_table(doc)
    target = doc["target_loss"]
    title = "Comparison" + ("" if target is None else f" (target loss {target:.4f})")
    table = Table(title=title, title_justify="left", header_style="bold")
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return Group(table, *_artifact_lines(doc))


def layer_table(doc: Mapping[str, Any]) -> Group:
    """Per-module rows in the chosen order, then the aggregates by type and group."""
    intruders = doc.get("intruders") is not None
    table = Table(
        title=f"dW per module (energy at r = {doc['rank']}, sorted by {doc['sort']})",
        title_justify="left",
        header_style="bold",
    )
    columns = [
        "module",
        "||dW||",
        "rel change",
        "energy",
        "r90",
        "r95",
        "r99",
        "eff rank",
        "stable",
        "share",
    ]
    for column in columns + (["intruders"] if intruders else []):
        table.add_column(column, justify="left" if column == "module" else "right")

    def rank(v: int | None) -> str:
        return "-" if v is None else str(v)

    for r in doc["modules"]:
        cells = [
            r["name"],
            f"{r['delta_norm']:.4g}",
            _rel(r["rel_change"]),
            Text(_pct(r["energy"]), style=_energy_style(r["energy"])),
            rank(r["rank_90"]),
            rank(r["rank_95"]),
            rank(r["rank_99"]),
            "-" if r["effective_rank"] is None else f"{r['effective_rank']:.1f}",
            f"{r['stable_rank']:.2f}",
            _pct(r["share"]),
        ]
        table.add_row(*cells, *([str(r["intruders"])] if intruders else []))
    parts: list[Any] = [table]
    for title, key in (("By module type", "by_module_type"), ("Attention vs MLP", "by_group")):
        agg = Table(title=title, title_justify="left", header_style="bold")
        for column in (
            "name",
            "count",
            "||dW||",
            "rel change",
            "energy",
            "mean r90",
            "mean eff rank",
            "share",
        ):
            agg.add_column(column, justify="left" if column == "name" else "right")
        for name, g in doc[key].items():
            agg.add_row(
                name,
                str(g["count"]),
                f"{g['delta_norm']:.4g}",
                _rel(g["rel_change"]),
                _pct(g["energy"]),
                "-" if g["mean_rank_90"] is None else f"{g['mean_rank_90']:.1f}",
                "-" if g["mean_effective_rank"] is None else f"{g['mean_effective_rank']:.1f}",
                _pct(g["share"]),
            )
        parts.append(agg)
    return Group(*parts, *_artifact_lines(doc))


def sweep_table(doc: Mapping[str, Any]) -> Group:
    """Energy and error per rank (and the trained study when present)."""
    table = Table(title="Rank sweep", title_justify="left", header_style="bold")
    kinds = list(doc["ranks"][0]["by_module_type"])
    for column in ("rank", "params", "total energy", "mean energy", "mean rel err", *kinds):
        table.add_column(column, justify="right")
    for r in doc["ranks"]:
        table.add_row(
            str(r["rank"]),
            f"{r['adapter_parameters']:,}",
            _pct(r["total_energy"]),
            _pct(r["mean_energy"]),
            _pct(r["mean_rel_error"]),
            *(_pct(r["by_module_type"][k]["total_energy"]) for k in kinds),
        )
    parts: list[Any] = [table]
    study = doc.get("study")
    if study:
        trained = Table(
            title="Rank study (svd init per rank vs random)",
            title_justify="left",
            header_style="bold",
        )
        for column in ("arm", "initial loss", "final loss", "final eval loss"):
            trained.add_column(column, justify="left" if column == "arm" else "right")

        def num(v: float | None) -> str:
            return "-" if v is None else f"{v:.4f}"

        for s in study["svd"]:
            trained.add_row(
                f"svd r={s['rank']}",
                num(s["initial_loss"]),
                num(s["final_loss"]),
                num(s["final_eval_loss"]),
            )
        random = study["random"]
        trained.add_row(
            f"random r={random['rank']}",
            num(random["initial_loss"]),
            num(random["final_loss"]),
            num(random["final_eval_loss"]),
        )
        parts.append(trained)
    return Group(
        *parts,
        Text(f"cache: {doc['cache']['hits']} hits / {doc['cache']['misses']} misses"),
        *_artifact_lines(doc),
    )


def demo_summary(doc: Mapping[str, Any]) -> Group:
    """The seed's table for every arm, the plots, the timings and the plain-language reading."""
    from rich.panel import Panel

    comparison = compare_table({**doc["comparison"], "artifacts": {}})
    spectra = doc["spectra"]
    facts = Text.assemble(
        ("dW at rank ", "bold"),
        str(doc["settings"]["rank"]),
        ": total energy ",
        _pct(spectra["total_energy"]),
        ", mean per module ",
        _pct(spectra["mean_energy"]),
        ", outside the LoRA targets ",
        _pct(spectra["untargeted_share"]),
    )
    timings = Text(
        "time per step (s): " + ", ".join(f"{k} {v:.0f}" for k, v in doc["timings_s"].items()),
        style="dim",
    )
    reused = [a["name"] for a in [doc["teacher"], *doc["students"]] if a.get("reused")]
    notes = [Text(f"reused finished runs: {', '.join(reused)}", style="dim")] if reused else []
    return Group(
        comparison,
        facts,
        Panel(doc["reading"], title="Reading", title_align="left"),
        *(Text(f"{k}: {v}", style="dim") for k, v in doc["artifacts"].items()),
        timings,
        *notes,
    )
