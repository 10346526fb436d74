"""Fixtures of the warm `svd` paths' tests: a private pair and a count of full runs."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import pytest

from svdlora_cli.spectra import svd_step


@pytest.fixture
def pair(qwen2_pair, tmp_path) -> tuple[Path, Path]:
    """A private copy of the tiny Qwen2 pair (some tests rewrite the tuned weights)."""
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    shutil.copytree(qwen2_pair.base, base)
    shutil.copytree(qwen2_pair.tuned, tuned)
    return base, tuned


@pytest.fixture
def full_runs(monkeypatch) -> list[int]:
    """Counts the full path's decomposition step (the warm path never calls it)."""
    calls: list[int] = []
    real = svd_step.run_svd

    @functools.wraps(real)
    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(svd_step, "run_svd", counted)
    return calls
