"""The console entry point ends the process without the interpreter's teardown, after the
atexit hooks and with every byte of output flushed; it leaves the usual exit to Python
when that is not safe."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from svdlora_cli.cli import app as app_module

CHILD = """
import atexit, sys
from pathlib import Path
marker = Path(sys.argv[1])
atexit.register(lambda: marker.write_text("hooks ran"))
print("x" * 100000, end="")  # more than a pipe buffer: flushed at the end, not lost
sys.argv = ["svdlora", *sys.argv[2:]]
from svdlora_cli.cli.app import run
run()
raise AssertionError("run() returned")
"""


@pytest.mark.parametrize(
    ("args", "code"), [(["--version"], 0), (["svd"], 1), (["svd", "--no-such-option"], 2)]
)
def test_run_exits_with_the_code_after_the_hooks_and_the_output(tmp_path, args, code):
    marker = tmp_path / "hooks"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(marker), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "SVDLORA_DEBUG": ""},
        timeout=120,
    )
    assert done.returncode == code, done.stderr
    assert done.stdout.startswith("x" * 100000)
    assert marker.read_text() == "hooks ran"
    if code == 0:
        assert done.stdout.removeprefix("x" * 100000).startswith("svdlora ")


def _exits(monkeypatch: pytest.MonkeyPatch, code: object) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(app_module.os, "_exit", calls.append)
    app_module.exit_now(code)
    return calls


def test_exit_now_leaves_the_usual_exit_when_it_is_not_safe(monkeypatch):
    monkeypatch.delenv("SVDLORA_DEBUG", raising=False)
    ran: list[bool] = []
    monkeypatch.setattr("atexit._run_exitfuncs", lambda: ran.append(True))
    monkeypatch.setattr(threading, "active_count", lambda: 1)  # this thread only
    assert _exits(monkeypatch, None) == [0] and ran == [True]
    assert _exits(monkeypatch, 3) == [3]
    assert _exits(monkeypatch, "a message Python prints") == []
    monkeypatch.setenv("SVDLORA_DEBUG", "1")
    assert _exits(monkeypatch, 0) == []
    monkeypatch.delenv("SVDLORA_DEBUG")
    monkeypatch.setattr(threading, "active_count", lambda: 2)
    assert _exits(monkeypatch, 0) == []  # Python would wait for the other thread
    assert ran == [True, True]
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    monkeypatch.setattr(sys, "getprofile", lambda: object())  # cProfile: writes at exit
    assert _exits(monkeypatch, 0) == []
    assert ran == [True, True]


def test_a_profiled_run_still_writes_its_profile(tmp_path):
    stats = tmp_path / "run.prof"
    done = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(stats), "-m", "svdlora_cli", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.startswith("svdlora ")
    assert stats.stat().st_size > 0
