"""One column spec: the rich tables and the text reports show each figure with the same header
and the same formatted value, and there is a single percentage formatter."""

from __future__ import annotations

import ast
import io
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from svdlora_cli.reporting import columns as C
from svdlora_cli.reporting.compare_views import comparison_markdown, comparison_text
from svdlora_cli.reporting.tables import compare_table, delta_table, svd_table, training_table
from svdlora_cli.reporting.text import delta_report, fixed_width, svd_report

REPORTING = Path(C.__file__).parent


@pytest.mark.parametrize(
    ("value", "kwargs", "expected"),
    [
        (None, {}, "-"),
        (None, {"digits": 3, "signed": True}, "-"),
        (0, {}, "0.0%"),
        (0.0, {"digits": 2}, "0.00%"),
        (1, {}, "100.0%"),
        (0.4567, {}, "45.7%"),
        (0.4567, {"digits": 2}, "45.67%"),
        (0.99996, {}, "100.0%"),
        (0.00049, {}, "0.0%"),
        (1.024, {}, "102.4%"),
        (-0.05, {}, "-5.0%"),
        (0.05, {"signed": True}, "+5.0%"),
        (0.0, {"signed": True}, "+0.0%"),
        (0.271, {"signed": True, "unit": " pp"}, "+27.1 pp"),
        (0.000123456, {"digits": 3, "significant": True}, "0.0123%"),
        (0.5, {"digits": 3, "significant": True}, "50%"),
    ],
)
def test_pct(value, kwargs, expected):
    assert C.pct(value, **kwargs) == expected


def test_rel_pct_keeps_small_changes_visible():
    assert C.rel_pct(0.0123456) == "1.23%"
    assert C.rel_pct(0.000123456) == "0.0123%"
    assert C.rel_pct(None) == "-"


def test_column_value_cell_and_getter():
    col = C.Column("energy", "energy", C.pct)
    assert col.cell({"energy": 0.5}) == "50.0%" and col.cell({}) == "-"
    derived = C.Column("twice", "x", C.count, get=lambda r: 2 * r["x"])
    assert derived.value({"x": 3}) == 6 and derived.cell({"x": 3}) == "6"
    assert C.text_rows([col, derived], [{"energy": 1.0, "x": 1}]) == [
        ["energy", "twice"],
        ["100.0%", "2"],
    ]
    assert C.named({"q_proj": {"count": 2}}) == [{"name": "q_proj", "count": 2}]


def test_fixed_width_follows_the_alignment():
    lines = fixed_width([["a", "b"], ["xyz", "1"]], ["right", "left"])
    assert lines == ["  a  b", "---  -", "xyz  1"]


def _module(name: str, kind: str, energy: float) -> dict[str, Any]:
    return {
        "name": name,
        "module_type": kind,
        "shape": [64, 32],
        "rank": 4,
        "energy": energy,
        "rel_error": (1 - energy) ** 0.5,
        "effective_rank": 3.14159,
        "stable_rank": 1.23456,
        "rank_50": 1,
        "rank_90": 3,
        "rank_95": None,
        "rank_99": 7,
        "singular_values": [4.0, 3.0, 2.0, 1.0],
    }


UNTARGETED = [
    {
        "name": "model.embed_tokens.weight",
        "kind": "embedding",
        "delta_norm": 0.5,
        "rel_change": 0.000123456,
        "delta_sq": 0.25,
    }
]

SVD_DOC: dict[str, Any] = {
    "rank": 4,
    "energy_target": None,
    "method": "exact",
    "modules": [
        _module("model.layers.0.self_attn.q_proj", "q_proj", 0.95678),
        _module("model.layers.1.self_attn.q_proj", "q_proj", 0.49951),
        _module("model.layers.0.mlp.up_proj", "up_proj", 0.7125),
    ],
    "untargeted": UNTARGETED,
    "summary": {
        "count": 3,
        "adapter_parameters": 1234,
        "mean_energy": 0.72,
        "total_energy": 0.7801,
        "min_energy": 0.49951,
        "mean_rel_error": 0.4567,
        "mean_effective_rank": 3.0,
        "mean_stable_rank": 1.2,
        "mean_rank_90": 2.6667,
        "zero_modules": 0,
        "untargeted_share": 0.18345,
        "by_module_type": {
            k: {
                "count": 1,
                "mean_energy": 0.7,
                "total_energy": 0.8,
                "mean_rel_error": 0.4,
                "mean_effective_rank": 3.0,
            }
            for k in ("q_proj", "up_proj")
        },
        "by_group": {
            g: {"count": 1, "mean_energy": 0.7, "total_energy": 0.8, "mean_rank_90": 2.5}
            for g in ("attention", "mlp")
        },
    },
    "cache": {"hits": 0, "misses": 3},
}

_GROUP = {
    "count": 2,
    "delta_norm": 1.23456,
    "rel_change": 0.0123456,
    "max_abs": 0.00123,
    "share_of_total": 0.4567,
}
DELTA_DOC: dict[str, Any] = {
    "modules": [
        {
            "name": "m.q_proj",
            "shape": [4, 8],
            "base_norm": 3.21,
            "delta_norm": 0.1234,
            "rel_change": 0.0384,
            "max_abs": 0.0111,
        }
    ],
    "untargeted": UNTARGETED,
    "summary": {
        "targets": 14,
        "changed_targets": 14,
        "untargeted_changed": 1,
        "total_delta_norm": 1.5,
        "targeted_share": 0.8889,
        "untargeted_share": 0.1111,
        "by_module_type": {"q_proj": _GROUP, "up_proj": _GROUP},
        "by_group": {"attention": _GROUP, "mlp": _GROUP},
    },
}


def _arm(name: str, initial: float, final: float, **extra: Any) -> dict[str, Any]:
    return {
        "arm": name,
        "n_runs": 1,
        "initial_loss": initial,
        "final_loss": final,
        "min_loss": final,
        "final_eval_loss": final,
        "steps_to_target": 12.0,
        "never_reached": 0,
        "energy_captured": None,
        "recovered_start": 0.0,
        "recovered_end": 0.342,
        "relative_distance": 1.024,
        "accuracy": 0.0,
        "auc": 24.8,
        "gap_to_teacher_pct": 214.6,
        "oscillation": 0.2349,
        "spread": {},
        **extra,
    }


COMPARE_DOC: dict[str, Any] = {
    "target_loss": 0.6,
    "target_source": "teacher",
    "recovered_basis": "basis",
    "arms": [
        _arm("random", 1.4216, 1.2014),
        _arm("svd", 0.6269, 0.4433, energy_captured=0.553, recovered_start=0.835),
        _arm("teacher", 1.4216, 0.3819, accuracy=0.5),
    ],
}


def _rich_grids(renderable: Any) -> list[list[list[str]]]:
    """Every table of a rich renderable as rows of stripped cells (header first)."""
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(renderable)
    grids: list[list[list[str]]] = []
    for line in console.export_text().splitlines():
        if line.startswith("┏"):
            grids.append([])
        elif line[:1] in ("┃", "│"):
            grids[-1].append([c.strip() for c in re.split("[┃│]", line)[1:-1]])
    return grids


def _text_grid(report: str, title: str) -> list[list[str]]:
    """The fixed-width table under a section title: header row, then data rows."""
    lines = report.splitlines()
    start = lines.index(title) + 2
    if lines[start].startswith("share of total"):
        start += 1
    grid = [re.split(r"\s{2,}", lines[start].strip())]
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        grid.append(re.split(r"\s{2,}", line.strip()))
    return grid


def _assert_same_figures(rich_grid, text_grid, rich_cols, text_cols, records):
    shared = [c for c in rich_cols if c in text_cols]
    assert len(shared) >= 4
    rich_rows = {row[0]: row for row in rich_grid[1:]}
    text_rows = {row[0]: row for row in text_grid[1:]}
    for col in shared:
        i, j = rich_cols.index(col), text_cols.index(col)
        assert rich_grid[0][i] == text_grid[0][j] == col.header
        for record in records:
            name = record["name"]
            assert rich_rows[name][i] == text_rows[name][j] == col.cell(record), col.header


def test_svd_modules_read_the_same_in_table_and_report():
    rich_grid = _rich_grids(svd_table(SVD_DOC))[0]
    text_grid = _text_grid(svd_report(SVD_DOC), "Per module")
    _assert_same_figures(
        rich_grid,
        text_grid,
        C.SVD_MODULES_TABLE,
        C.SVD_MODULES_REPORT,
        SVD_DOC["modules"],
    )
    first = {r[0]: r for r in rich_grid}["model.layers.0.self_attn.q_proj"]
    assert first[C.SVD_MODULES_TABLE.index(C.ENERGY)] == "95.7%"
    assert "95.7%" in text_grid[1] and "3.1" in text_grid[1]


def test_delta_groups_and_untargeted_read_the_same_in_table_and_report():
    grids = _rich_grids(delta_table(DELTA_DOC))
    report = delta_report(DELTA_DOC)
    groups = C.named(DELTA_DOC["summary"]["by_module_type"])
    _assert_same_figures(
        grids[0], _text_grid(report, "By module type"), C.DELTA_GROUPS, C.DELTA_GROUPS, groups
    )
    rich_untargeted = (*C.UNTARGETED, C.untargeted_share(1.5))
    text_grid = _text_grid(report, "Changes a LoRA cannot capture (untargeted tensors)")
    _assert_same_figures(grids[2], text_grid, rich_untargeted, C.UNTARGETED, UNTARGETED)
    assert text_grid[1][-1] == grids[2][1][3] == "0.0123%"
    assert "share of total ||dW||^2 outside the targets: 11.1%" in report


def test_compare_table_text_and_markdown_show_the_same_grid():
    rich_grid = _rich_grids(compare_table(COMPARE_DOC))[0]
    n = len(rich_grid) + 1  # the text and markdown tables have an underline row
    report = comparison_text(COMPARE_DOC)
    text = report.splitlines()
    start = next(i for i, line in enumerate(text) if line.startswith("Metric"))
    text_grid = [re.split(r"\s{2,}", line.strip()) for line in text[start : start + n]]
    markdown = comparison_markdown(COMPARE_DOC).splitlines()
    start = next(i for i, line in enumerate(markdown) if line.startswith("| Metric"))
    md_grid = [
        [c.strip() for c in line.strip("|").split("|")] for line in markdown[start : start + n]
    ]
    assert rich_grid == text_grid[:1] + text_grid[2:] == md_grid[:1] + md_grid[2:]
    rows = {r[0]: r for r in rich_grid}
    assert rich_grid[0] == ["Metric", "random", "svd", "svd vs random", "teacher"]
    assert rows["Energy captured"][1:3] == ["-", "55.3%"]
    assert rows["Gap recovered at start"][3] == "+83.5 pp"
    assert rows["Final loss"][3] == "63.1% ↓"
    assert "+214.6%" in report


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(REPORTING.glob("*.py")), ids=lambda p: p.name)
def test_one_pct_and_rich_only_in_tables(path):
    source = path.read_text()
    assert "def _pct" not in source
    imports = _imported_modules(path)
    assert "typer" not in imports
    if path.name != "tables.py":
        assert "rich" not in imports
    assert len(source.splitlines()) <= 400


def test_compare_shows_throughput_and_mfu_when_the_summaries_have_them():
    speed = {"tokens_per_s": 1290.4, "tflops": 8.123, "mfu": 0.0082}
    doc = {
        **COMPARE_DOC,
        "arms": [
            _arm("random", 1.4216, 1.2014, **speed),
            _arm("svd", 0.6269, 0.4433, tokens_per_s=1099.0, tflops=6.9, mfu=0.007),
            _arm("teacher", 1.4216, 0.3819, tokens_per_s=980.0, tflops=227.4, mfu=0.23),
        ],
    }
    rows = {r[0]: r for r in _rich_grids(compare_table(doc))[0]}
    assert rows["Tokens/s"][1:] == ["1290", "1099", "-14.8%", "980"]  # svd is 14.8% slower
    assert rows["TFLOP/s"][1:] == ["8.12", "6.9", "-15.1%", "227"]
    assert rows["MFU"][1:] == ["0.8%", "0.7%", "-0.1 pp", "23.0%"]
    detail = _text_grid(comparison_text(doc), "Per arm (mean ± std over seeds)")
    assert detail[0][-4:] == ["tokens/s", "TFLOP/s", "MFU", "FLOPs"]
    assert detail[1][-4:] == ["1290", "8.12", "0.8%", "-"]  # no FLOPs recorded: unknown
    assert "| MFU | 0.8% | 0.7% |" in comparison_markdown(doc)


def test_runs_from_before_mfu_accounting_show_blanks():
    rows = {r[0]: r for r in _rich_grids(compare_table(COMPARE_DOC))[0]}
    assert not {"Tokens/s", "TFLOP/s", "MFU"} & set(rows)  # no arm has them: no rows
    detail = _text_grid(comparison_text(COMPARE_DOC), "Per arm (mean ± std over seeds)")
    assert detail[1][-4:] == ["-", "-", "-", "-"]
    arms = [
        {"name": "random", "tokens_per_s": 2475.0, "tflops": 16.1, "mfu": 0.0163, "artifacts": {}},
        {"name": "svd", "tokens_per_s": 2400.0, "artifacts": {}},  # an old run's summary
    ]
    grid = _rich_grids(training_table({"arms": arms}))[0]
    assert grid[0][-3:] == ["tokens/s", "TFLOP/s", "MFU"]
    assert grid[1][-3:] == ["2475", "16.1", "1.6%"] and grid[2][-3:] == ["2400", "-", "-"]


@pytest.mark.parametrize(
    ("value", "text"), [(None, "-"), (0.000512, "0.000512"), (8.123, "8.12"), (1234.5, "1,234")]
)
def test_rate(value, text):
    assert C.rate(value) == text
