"""The layering holds: the core and the workflows never import typer, rich or the CLI, and no
module grows past 400 lines."""

from __future__ import annotations

import ast
import sys
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


# The rooms of the package, lowest first: a module may import its own room and the rooms
# below it, never one above (an upward arrow), so the room graph has no circle.
ROOMS = (
    ("errors",),
    ("files", "distributed", "data", "workspace", "output_sets", "devices"),
    ("store",),
    ("models",),
    ("adapters",),
    ("spectra",),
    ("training",),
    ("analysis",),
    ("reporting",),
    ("artifacts",),
    ("workflows",),
    ("cli", "__main__"),
)
LEVEL = {room: level for level, rooms in enumerate(ROOMS) for room in rooms}
TOP_LEVEL_LIMIT = 10  # .py modules directly in svdlora_cli/, __init__ and __main__ included


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _internal_imports(path: Path) -> set[str]:
    """Absolute names of the package's modules (or packages) that `path` imports."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join([*base, node.module] if node.module else base)
            found |= {target} if node.module else {f"{target}.{a.name}" for a in node.names}
    return found


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_room_is_declared():
    rooms = {p.stem if p.suffix else p.name for p in PACKAGE.iterdir()} - {
        "__init__",
        "__pycache__",
    }
    assert rooms <= set(LEVEL), f"rooms missing from ROOMS: {sorted(rooms - set(LEVEL))}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_upward_arrow(path):
    mine = _room(_module_name(path))
    if mine is None:  # svdlora_cli/__init__.py: lazy exports only
        return
    for target in _internal_imports(path):
        theirs = _room(target)
        if theirs is None or theirs == mine:
            continue
        assert LEVEL[theirs] <= LEVEL[mine], f"{mine} imports {theirs}, a room above it"


def test_no_import_circle():
    names = {_module_name(p): p for p in MODULES}
    graph = {
        m: {t for t in _internal_imports(p) if t in names and t != m} for m, p in names.items()
    }
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            raise AssertionError(
                "import circle: " + " -> ".join([*trail[trail.index(node) :], node])
            )
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*trail, node])
        done.add(node)

    for module in sorted(graph):
        visit(module, [])


def test_the_circle_check_can_fail(tmp_path, monkeypatch):
    """A planted two-module circle is caught (so the check above is not vacuous)."""
    pkg = tmp_path / "svdlora_cli"
    (pkg / "store").mkdir(parents=True)
    (pkg / "store" / "a.py").write_text("from .b import x\n")
    (pkg / "store" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import y\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    monkeypatch.setattr(sys.modules[__name__], "MODULES", sorted(pkg.rglob("*.py")))
    with pytest.raises(AssertionError, match="import circle"):
        test_no_import_circle()


def test_few_modules_at_the_top():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= TOP_LEVEL_LIMIT, f"{len(top)} modules directly in svdlora_cli/: {top}"


def test_tests_mirror_the_package_and_never_share_a_name():
    tests = Path(__file__).resolve().parent
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    missing = {r for r in rooms if not (tests / r).is_dir()} - {"cli"} | (
        {"cli"} - {p.name for p in tests.iterdir()}
    )
    assert not missing, f"tests/ has no folder for {sorted(missing)}"
    files = [p for p in tests.rglob("test_*.py") if "__pycache__" not in p.parts]
    seen: dict[str, Path] = {}
    for path in files:
        assert path.name not in seen, f"two test files named {path.name}: {seen[path.name]}, {path}"
        seen[path.name] = path


DUPLICATE_LIMIT = 8  # non-boilerplate pairs of repeated code in svdlora_cli/


def test_little_repeated_code():
    """The project's `duplicates` tool, where it is installed (it is not a Python package)."""
    import re
    import shutil
    import subprocess

    tool = shutil.which("duplicates")
    if tool is None:
        pytest.skip("the duplicates tool is not on PATH")
    out = subprocess.run(
        [tool, "--most", "200", "--seconds", "120"],
        cwd=PACKAGE,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "incomplete:" not in out, out
    rows = [r for r in out.splitlines() if re.match(r"D\d+ ", r) and "boilerplate" not in r]
    assert len(rows) <= DUPLICATE_LIMIT, "\n".join(rows)
