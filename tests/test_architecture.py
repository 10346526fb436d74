"""The layering holds: the core and the workflows never import typer, rich or the CLI, and no
module grows past 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "svdlora_cli"
# The CLI layer, the entry point and the one renderer that draws rich tables for it.
UI = {"__main__.py", "reporting/tables.py"}
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names.add("." * node.level + module)
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_and_workflows_stay_below_the_cli(path):
    relative = path.relative_to(PACKAGE).as_posix()
    assert len(path.read_text().splitlines()) <= 400, f"{relative} is over 400 lines"
    if relative.startswith("cli/") or relative in UI:
        return
    bad = {
        name
        for name in _imports(path)
        if name.split(".")[0] in ("typer", "rich") or ".cli" in name or name.startswith("cli")
    }
    assert not bad, f"{relative} imports {bad}"
