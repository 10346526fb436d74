"""rich tables for the terminal, built from the same column lists as the text reports."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .columns import (
    CACHE_ENTRIES,
    DELTA_GROUPS,
    DELTA_TOTALS,
    INTRUDERS,
    LAYER_GROUPS,
    LAYER_MODULES,
    RANK_STUDY,
    SVD_MODULES_TABLE,
    SVD_TOTALS,
    SWEEP,
    TRAINING,
    UNTARGETED,
    Column,
    module_type_energy,
    named,
    pct,
    untargeted_share,
)
from .text import verification_rows

Record = Mapping[str, Any]


def _cells(columns: Sequence[Column], record: Record) -> list[str | Text]:
    """Formatted cells of one record; a column with a style gets a styled Text."""
    return [
        Text(c.cell(record), style=c.style(c.value(record))) if c.style else c.cell(record)
        for c in columns
    ]


def _table(title: str, columns: Sequence[Column], records: Iterable[Record] = ()) -> Table:
    """A rich table with the columns' headers and alignment, one row per record."""
    table = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        table.add_column(c.header, justify=c.align)
    for r in records:
        table.add_row(*_cells(columns, r))
    return table


def _totals(columns: Sequence[Column], record: Record) -> list[tuple[str, str] | str]:
    """'header value' pairs for a footer line, three spaces apart."""
    parts: list[tuple[str, str] | str] = []
    for i, c in enumerate(columns):
        parts += [(("   " if i else "") + c.header + " ", "bold"), c.cell(record)]
    return parts


def svd_table(doc: Record) -> Group:
    """Per-module spectra grouped by module type, then the summary line."""
    rank = doc["rank"]
    title = (
        f"dW spectra at rank {rank}"
        if rank is not None
        else f"dW spectra at energy >= {doc['energy_target']}"
    )
    table = _table(title, SVD_MODULES_TABLE)
    by_type: dict[str, list[Record]] = {}
    for m in doc["modules"]:
        by_type.setdefault(m["module_type"], []).append(m)
    for kind, rows in by_type.items():
        stats = doc["summary"]["by_module_type"][kind]
        table.add_row(
            Text(f"{kind} (mean {pct(stats['mean_energy'])})", style="bold cyan"),
            end_section=False,
        )
        for m in rows:
            table.add_row(*_cells(SVD_MODULES_TABLE, m))
        table.add_section()
    footer = Text.assemble(
        *_totals(SVD_TOTALS, doc["summary"]),
        ("   cache ", "bold"),
        f"{doc['cache']['hits']} hits / {doc['cache']['misses']} misses",
    )
    checks = [Text(f"verification {c}: {r} ({d})") for c, r, d in verification_rows(doc)]
    return Group(table, footer, *checks, *_artifact_lines(doc))


def verify_table(doc: Record) -> Table:
    """`svdlora verify`: one row per check (structural, probe, teacher gap)."""
    table = Table(title=f"Adapter {doc['adapter']} on {doc['base_model']}", title_justify="left")
    for header in ("check", "result", "detail"):
        table.add_column(header, header_style="bold")
    for check, result, detail in verification_rows(doc):
        style = "red" if result == "FAILED" else "green" if result == "ok" else ""
        table.add_row(check, Text(result, style=style), detail)
    return table


def _artifact_lines(doc: Record) -> list[Text]:
    artifacts = doc.get("artifacts") or {}
    return [Text(f"{name}: {path}", style="dim") for name, path in artifacts.items()]


def delta_table(doc: Record) -> Group:
    """Change per module type and group, then the untargeted tensors."""
    s = doc["summary"]
    parts: list[Any] = [
        _table(title, DELTA_GROUPS, named(s[key]))
        for title, key in (
            ("dW by module type", "by_module_type"),
            ("dW: attention vs MLP", "by_group"),
        )
    ]
    columns = (*UNTARGETED, untargeted_share(s["total_delta_norm"]))
    other = _table("Changed tensors a LoRA cannot capture", columns, doc["untargeted"])
    if not doc["untargeted"]:
        other.add_row("none", *("-" for _ in columns[1:]))
    parts += [other, Text.assemble(*_totals(DELTA_TOTALS, s))]
    return Group(*parts, *_artifact_lines(doc))


def cache_table(entries: Sequence[Record]) -> Table:
    return _table("svdlora cache entries", CACHE_ENTRIES, entries)


def training_table(doc: Record) -> Group:
    """One row per trained arm: start and end losses, eval loss and throughput."""
    table = _table("Training", TRAINING, doc["arms"])
    paths = [
        Text(f"{k}: {v}", style="dim") for arm in doc["arms"] for k, v in arm["artifacts"].items()
    ]
    return Group(table, *paths)


def compare_table(doc: Record) -> Group:
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


def layer_table(doc: Record) -> Group:
    """Per-module rows in the chosen order, then the aggregates by type and group."""
    columns = (*LAYER_MODULES, *((INTRUDERS,) if doc.get("intruders") is not None else ()))
    title = f"dW per module (energy at r = {doc['rank']}, sorted by {doc['sort']})"
    parts: list[Any] = [_table(title, columns, doc["modules"])]
    for title, key in (("By module type", "by_module_type"), ("Attention vs MLP", "by_group")):
        parts.append(_table(title, LAYER_GROUPS, named(doc[key])))
    return Group(*parts, *_artifact_lines(doc))


def sweep_table(doc: Record) -> Group:
    """Energy and error per rank (and the trained study when present)."""
    kinds = list(doc["ranks"][0]["by_module_type"])
    columns = (*SWEEP, *(module_type_energy(k) for k in kinds))
    parts: list[Any] = [_table("Rank sweep", columns, doc["ranks"])]
    study = doc.get("study")
    if study:
        arms = [{**s, "name": f"svd r={s['rank']}"} for s in study["svd"]]
        arms.append({**study["random"], "name": f"random r={study['random']['rank']}"})
        parts.append(_table("Rank study (svd init per rank vs random)", RANK_STUDY, arms))
    return Group(
        *parts,
        Text(f"cache: {doc['cache']['hits']} hits / {doc['cache']['misses']} misses"),
        *_artifact_lines(doc),
    )


def demo_summary(doc: Record) -> Group:
    """The seed's table for every arm, the plots, the timings and the plain-language reading."""
    from rich.panel import Panel

    comparison = compare_table({**doc["comparison"], "artifacts": {}})
    spectra = doc["spectra"]
    facts = Text.assemble(
        ("dW at rank ", "bold"),
        str(doc["settings"]["rank"]),
        ": total energy ",
        pct(spectra["total_energy"]),
        ", mean per module ",
        pct(spectra["mean_energy"]),
        ", outside the LoRA targets ",
        pct(spectra["untargeted_share"]),
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
