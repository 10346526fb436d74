"""The README's jq recipes run as written against a tiny workspace."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from svdlora_cli.training.steplog import StepRow, write_step_log

README = Path(__file__).resolve().parents[1] / "README.md"


def _recipes() -> list[str]:
    text = README.read_text()
    block = re.search(r"### JSON recipes with jq\n\n```bash\n(.*?)```", text, re.S)
    assert block, "the README lost its jq recipes section"
    return [
        line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")
    ]


def test_readme_has_recipes_for_every_analysis_command():
    commands = {
        line.split()[1] if line.startswith("svdlora") else line.split()[7] for line in _recipes()
    }
    assert {"svd", "delta", "layer-report", "sweep", "compare"} <= commands


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
@pytest.mark.parametrize("recipe", _recipes())
def test_jq_recipe_runs(recipe, llama_pair, tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    for name, losses in (("random", [2.0, 1.5, 1.2]), ("svd", [1.0, 0.9, 0.8])):
        rows = [
            StepRow(step=i, epoch=i / 2, loss=v, eval_loss=v, tokens=10 * i)
            for i, v in enumerate(losses)
        ]
        write_step_log(out / f"training_log_{name}.csv", rows)
    workspace = f'base_model = "{llama_pair.base}"\nteacher_model = "{llama_pair.tuned}"\n'
    (tmp_path / "svdlora.toml").write_text(workspace + 'output_dir = "runs"\n')
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", recipe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    if "select(" not in recipe:  # a filter may rightly select nothing on a tiny model
        assert result.stdout.strip(), result.stderr


def _command_lines() -> list[list[str]]:
    """Every `svdlora ...` line of the README's bash blocks, continuations joined."""
    import shlex

    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("svdlora "):
                lines.append(shlex.split(line.split("|")[0]))
    return lines


def test_every_readme_command_line_names_real_options():
    """The seed's names (--model-name, --data-path, --lora-rank) included."""
    import typer

    from svdlora_cli.cli.app import app

    root = typer.main.get_command(app)
    lines = _command_lines()
    assert len(lines) >= 10
    seen = set()
    for words in lines:
        command, rest = root, words[1:]
        while hasattr(command, "commands") and rest and rest[0] in command.commands:
            command, rest = command.commands[rest[0]], rest[1:]
        names = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        for word in rest:
            if word.startswith("-") and not word.lstrip("-").replace(".", "").isdigit():
                assert word.split("=")[0] in names, f"{' '.join(words)}: unknown {word}"
                seen.add(word)
    assert {"--model-name", "--data-path", "--lora-rank"} <= seen
