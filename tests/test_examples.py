"""The scripts in examples/ run as documented."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_rank_sweep_decomposes_once(llama_pair, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "rank_sweep.py"),
            str(llama_pair.base),
            str(llama_pair.tuned),
            "--ranks",
            "1",
            "2",
            "4",
            "--cache-dir",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(out.stdout)
    assert [r["rank"] for r in rows] == [1, 2, 4]
    assert [r["svd_calls"] for r in rows] == [0, 0, 14]  # the largest rank ran first
    energies = [r["total_energy"] for r in rows]
    assert energies == sorted(energies) and energies[-1] > 0.99


def test_accelerate_configs_load_and_name_real_options():
    """Each shipped accelerate config parses, and every engine key is a launch option
    (accelerate ignores unknown ones silently)."""
    import yaml
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    options = {action.dest for action in launch_command_parser()._actions}
    configs = sorted((EXAMPLES / "distributed").glob("*.yaml"))
    assert len(configs) >= 4
    for path in configs:
        config = load_config_from_file(str(path))
        text = path.read_text()
        assert f"num_processes: {config.num_processes}" in text
        assert text.startswith("# accelerate config:")  # the size comment comes first
        raw = yaml.safe_load(text)
        for section in ("fsdp_config", "deepspeed_config"):
            unknown = set(raw.get(section) or {}) - options
            assert not unknown, (path.name, unknown)


def test_seven_b_recipe_uses_real_options():
    """Every option in the 7B recipe's commands exists on its subcommand."""
    text = (EXAMPLES / "qwen2.5-math-7b" / "README.md").read_text()
    helps: dict[str, str] = {}
    checked = 0
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            found = re.search(r"(?:svdlora_cli|svdlora)\s+([a-z-]+)", line)
            if line.lstrip().startswith("#") or not found:
                continue
            command = found.group(1)
            if command not in helps:
                helps[command] = subprocess.run(
                    [sys.executable, "-m", "svdlora_cli", command, "--help"],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "COLUMNS": "200"},
                    check=True,
                ).stdout
            for option in re.findall(r"\s(--[a-z0-9-]+|-[a-z])\b", line[found.end() :]):
                assert option in helps[command], (command, option)
                checked += 1
    assert checked > 30 and {"train-teacher", "svd", "train", "compare"} <= set(helps)
