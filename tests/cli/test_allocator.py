"""Every command tunes glibc's malloc once (large buffers reused, not mapped afresh), unless
the user chose an allocator; the effect is checked by counting page faults."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from svdlora_cli.cli import allocator
from svdlora_cli.cli import app as app_module

GLIBC = sys.platform.startswith("linux") and allocator._glibc()

# A 64 MB buffer made and dropped 8 times (above glibc's largest adaptive threshold, so
# by default each one is a fresh mapping whose pages fault in); prints the minor faults.
CHILD = """
import resource, sys
from svdlora_cli.cli.allocator import tune_malloc
print(tune_malloc(), file=sys.stderr)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    buffer = bytearray(64 << 20)
    del buffer
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(**env: str) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "SVDLORA_"))}
    clean.pop("LD_PRELOAD", None)
    clean.pop("GLIBC_TUNABLES", None)
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout), done.stderr.strip()


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_tuned_malloc_reuses_a_large_buffer_instead_of_faulting_it_in_again():
    tuned, said = _faults()
    assert said == "tuned"
    system, said = _faults(SVDLORA_MALLOC="system")
    assert said == "left alone: SVDLORA_MALLOC=system"
    # 8 x 64 MB: about 130k faults of 4 KB (fewer with huge pages) by default, once when tuned.
    assert tuned * 4 < system, (tuned, system)


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"SVDLORA_MALLOC": "system"}, "SVDLORA_MALLOC=system"),
        ({"SVDLORA_MALLOC": "off"}, "SVDLORA_MALLOC=off"),
        ({"MALLOC_ARENA_MAX": "4"}, "MALLOC_ARENA_MAX"),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, "GLIBC_TUNABLES"),
        ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "LD_PRELOAD"),
    ],
)
def test_a_users_own_allocator_choice_is_left_alone(monkeypatch, env, reason):
    monkeypatch.setattr(allocator, "_done", None)
    assert allocator.tune_malloc(env) == f"left alone: {reason}"
    assert allocator.tune_malloc({}) == f"left alone: {reason}"  # once per process


def test_not_glibc_is_left_alone(monkeypatch):
    monkeypatch.setattr(allocator, "_done", None)
    monkeypatch.setattr(allocator, "_glibc", lambda: False)
    assert allocator.tune_malloc({}) == "left alone: not glibc"


def test_a_command_tunes_before_it_runs_and_help_does_not(monkeypatch):
    calls = []
    monkeypatch.setattr(app_module, "tune_malloc", lambda: calls.append("tuned"))
    runner = CliRunner()
    assert runner.invoke(app_module.app, ["svd", "--help"]).exit_code == 0
    assert calls == []
    assert runner.invoke(app_module.app, ["cache", "info", "--json"]).exit_code == 0
    assert calls == ["tuned"]
