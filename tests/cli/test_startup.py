"""Startup stays light: help and the cache commands never import the ML stack.

Each case runs `python -X importtime -m svdlora_cli ...` in a fresh process and reads the
import list from stderr, so a module-level import that drags in torch (or transformers,
peft, accelerate, matplotlib, scipy) anywhere on these paths fails here by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer

from svdlora_cli.cli.app import app
from svdlora_cli.spectra.decompose import Decomposition
from svdlora_cli.store.cache import ArtifactCache, content_key

HEAVY = frozenset({"torch", "transformers", "peft", "accelerate", "matplotlib", "scipy"})


def _command_paths(command=None, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every (nested) subcommand of the CLI, e.g. ("svd",) and ("cache", "info")."""
    command = command or typer.main.get_command(app)
    paths = []
    for name, sub in getattr(command, "commands", {}).items():
        paths.append((*prefix, name))
        paths.extend(_command_paths(sub, (*prefix, name)))
    return paths


def _imports(args: list[str], cwd: Path, cache_dir: Path) -> tuple[set[str], str]:
    """The top-level packages a CLI run imports, and its stdout."""
    env = {**os.environ, "SVDLORA_CACHE_DIR": str(cache_dir), "SVDLORA_NO_PROGRESS": "1"}
    env.pop("SVDLORA_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "svdlora_cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    names = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return names, done.stdout


def _assert_light(args: list[str], tmp_path: Path, cache_dir: Path | None = None) -> str:
    names, stdout = _imports(args, tmp_path, cache_dir or tmp_path / "cache")
    assert "svdlora_cli" in names  # the import list was read at all
    heavy = sorted(names & HEAVY)
    assert not heavy, f"`svdlora {' '.join(args)}` imports {heavy}"
    return stdout


@pytest.mark.parametrize("command", [(), *_command_paths()], ids=lambda c: " ".join(c) or "svdlora")
def test_help_imports_no_ml_stack(command, tmp_path):
    assert "Usage" in _assert_light([*command, "--help"], tmp_path)


@pytest.mark.parametrize(
    "args", [["info"], ["list"], ["verify"], ["clear", "--yes"]], ids=lambda a: a[0]
)
def test_cache_commands_on_a_fresh_cache_import_no_ml_stack(args, tmp_path):
    _assert_light(["cache", *args, "--json"], tmp_path)


@pytest.fixture
def filled_cache(tmp_path) -> Path:
    """A cache with one decomposition payload and one statistics entry."""
    cache = ArtifactCache(tmp_path / "filled")
    g = torch.Generator().manual_seed(0)
    U, S, Vh = torch.linalg.svd(torch.randn(6, 5, generator=g), full_matrices=False)
    dec = Decomposition(U[:, :3], S[:3], Vh[:3], float(S.square().sum()), "exact", False)
    cache.put_decomposition(content_key("svd", tensor="w"), dec, tensor="w")
    cache.put_json(content_key("stats", tensor="w"), {"fro": 1.0}, tensor="w")
    cache.close()
    return tmp_path / "filled"


@pytest.mark.parametrize("args", [["info"], ["list"], ["verify"]], ids=lambda a: a[0])
def test_cache_commands_on_entries_import_no_ml_stack(args, filled_cache, tmp_path):
    """Reading the index and checking payload checksums need no torch."""
    doc = json.loads(_assert_light(["cache", *args, "--json"], tmp_path, filled_cache))
    if args == ["verify"]:
        assert doc["checked"] == doc["ok"] == 1
    if args == ["info"]:
        assert doc["decompositions"] == 1 and doc["statistics"] == 1


def test_rebuilding_a_lost_index_imports_no_ml_stack(filled_cache, tmp_path):
    """An index rebuilt from the payloads' own entries reads only their headers."""

    for file in (filled_cache / "index").glob("cache.db*"):
        file.unlink()
    doc = json.loads(_assert_light(["cache", "info", "--json"], tmp_path, filled_cache))
    assert doc["decompositions"] == 1
