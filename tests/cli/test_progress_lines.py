"""Without a terminal (CI, nohup, `> log`), long steps print plain progress lines."""

from __future__ import annotations

import os
import subprocess
import sys


def test_a_log_gets_plain_progress_lines(llama_pair, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SVDLORA_NO_PROGRESS"}
    env["SVDLORA_PROGRESS_SECONDS"] = "0"  # every update: the pace is tested by its own rule
    command = [sys.executable, "-m", "svdlora_cli", "svd", "-b", str(llama_pair.base)]
    command += ["-t", str(llama_pair.tuned), "--rank", "2", "-o", str(tmp_path / "o")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("SVD: ")]
    assert lines and lines[-1].startswith("SVD: 14/14 ")
    assert all("\x1b[" not in line for line in lines)  # no terminal codes in a log
    assert "ETA" in lines[0]


def test_the_pace_rule_prints_the_end_even_when_quick(monkeypatch, capsys):
    from svdlora_cli.cli import _output

    monkeypatch.delenv("SVDLORA_NO_PROGRESS", raising=False)
    monkeypatch.setenv("SVDLORA_PROGRESS_SECONDS", "3600")
    with _output.training_progress("teacher") as update:
        for step in range(1, 6):
            update(step, 5, 1.0 / step)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("teacher: 5/5 loss 0.2000")
