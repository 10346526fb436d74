"""The CLI through CliRunner: JSON documents, files written, errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from svdlora_cli.cli.app import app
from tests.conftest import assert_user_error, invoke, invoke_json


def _commands(group, path=()):
    """(path, click command) for every leaf subcommand, nested groups (`cache`) included."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


COMMANDS = dict(_commands(typer.main.get_command(app)))


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    assert len(COMMANDS) >= 13  # 9 commands and the 4 of `cache`: an empty registry fails
    for top in {path[0] for path in COMMANDS}:
        assert top in result.stdout, top
    for option in ("--version", "--config", "--help"):
        assert option in result.stdout


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_every_command_help_shows_its_options(path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # at 80, rich cuts long names: "--gradient-checkpoi…"
    result = invoke(*path, "--help")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert f"Usage: svdlora {' '.join(path)}" in " ".join(result.stdout.split())
    for param in COMMANDS[path].params:
        if getattr(param, "hidden", False):
            continue
        is_option = param.param_type_name == "option"
        for name in [*param.opts, *param.secondary_opts] if is_option else [param.name]:
            assert name in result.stdout, (path, name)


def test_module_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "svdlora_cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.startswith("svdlora ")


def test_svd_json_document(llama_pair, tmp_path):
    doc = invoke_json(
        "svd",
        "--base-model",
        llama_pair.base,
        "--teacher-model",
        llama_pair.tuned,
        "--rank",
        "2",
        "-o",
        tmp_path / "out",
    )
    for key in ("rank", "method", "modules", "untargeted", "summary", "artifacts", "cache"):
        assert key in doc
    assert doc["rank"] == 2 and doc["cache"] == {"hits": 0, "misses": 14}
    module = doc["modules"][0]
    for key in (
        "name",
        "shape",
        "rank",
        "energy",
        "rel_error",
        "effective_rank",
        "stable_rank",
        "rank_90",
        "singular_values",
    ):
        assert key in module
    assert len(module["singular_values"]) == min(module["shape"])  # exact: full spectrum
    assert {"mean_energy", "total_energy"} <= set(doc["summary"])
    assert [u["name"] for u in doc["untargeted"]] == ["model.embed_tokens.weight"]
    for path in doc["artifacts"].values():
        assert Path(path).exists(), path
    assert Path(doc["artifacts"]["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(Path(doc["artifacts"]["analysis"]).read_text())
    assert saved["summary"] == doc["summary"]
    run_config = json.loads((tmp_path / "out" / "run_config.json").read_text())
    assert run_config["inputs"]["base"] == doc["fingerprints"]["base"]
    again = invoke_json(
        "svd", "-b", llama_pair.base, "-t", llama_pair.tuned, "-r", "1", "-o", tmp_path / "out"
    )
    assert again["cache"] == {"hits": 14, "misses": 0}


def test_seed_flag_aliases_and_text_report(llama_pair, tmp_path):
    result = invoke(
        "svd",
        "--base",
        llama_pair.base,
        "--tuned",
        llama_pair.tuned,
        "--rank",
        "2",
        "--output-dir",
        tmp_path / "o",
        "--no-plot",
    )
    assert result.exit_code == 0, result.output
    assert "dW spectra at rank 2" in result.stdout and "q_proj" in result.stdout
    report = (tmp_path / "o" / "svd_report_rank2.txt").read_text()
    assert "mean energy captured" in report and "model.embed_tokens.weight" in report
    assert not (tmp_path / "o" / "svd_analysis_rank2.png").exists()


def test_delta_json_document(llama_pair, tmp_path):
    doc = invoke_json("delta", "-b", llama_pair.base, "-t", llama_pair.tuned, "-o", tmp_path / "d")
    assert {"modules", "untargeted", "summary"} <= set(doc)
    assert len(doc["modules"]) == 14
    assert doc["untargeted"][0]["kind"] == "embedding"
    assert set(doc["summary"]["by_group"]) == {"attention", "mlp"}
    assert (tmp_path / "d" / "delta_report.txt").exists()


def test_energy_mode_and_clamped_rank(llama_pair, tmp_path):
    doc = invoke_json(
        "svd", "-b", llama_pair.base, "-t", llama_pair.tuned, "--energy", "0.9", "-o", tmp_path
    )
    assert doc["rank"] is None and doc["summary"]["rank_pattern"]
    assert all(m["energy"] >= 0.9 for m in doc["modules"])
    assert Path(doc["artifacts"]["adapter"]).name == "adapter_energy90"
    result = invoke(
        "svd", "-b", llama_pair.base, "-t", llama_pair.tuned, "-r", "40", "-o", tmp_path, "--json"
    )
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert {m["rank"] for m in doc["modules"] if m["shape"] == [16, 32]} == {16}
    assert "clamped" in result.stderr


def test_cache_commands(llama_pair, tmp_path):
    cache = tmp_path / "c"
    invoke_json(
        "svd",
        "-b",
        llama_pair.base,
        "-t",
        llama_pair.tuned,
        "-r",
        "2",
        "--cache-dir",
        cache,
        "-o",
        tmp_path,
    )
    info = invoke_json("cache", "info", "--cache-dir", cache, "-o", tmp_path / "i")
    assert info["decompositions"] == 14 and Path(info["artifacts"]["cache_info"]).exists()
    listing = invoke_json("cache", "list", "--cache-dir", cache)
    assert sum(e["kind"] == "svd" for e in listing["entries"]) == 14
    assert_user_error(invoke("cache", "clear", "--cache-dir", cache, "--json"), "confirmation")
    cleared = invoke_json("cache", "clear", "--yes", "--cache-dir", cache)
    assert cleared["removed"] > 14
    assert invoke_json("cache", "info", "--cache-dir", cache)["decompositions"] == 0


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--rank", "0"], "--rank must be a positive"),
        (["--rank", "-3"], "--rank must be a positive"),
        (["--energy", "1.5"], "--energy must be in (0, 1]"),
        (["--energy", "0"], "--energy must be in (0, 1]"),
        (["--rank", "2", "--include", "nothing_here"], "no LoRA target"),
        (["--rank", "2", "--method", "fast"], "unknown --method"),
        (["--rank", "2", "--split", "c"], "unknown --split"),
        (["--rank", "2", "--device", "tpu9"], "device"),
        (["--rank", "2", "--device", "cuda"], "CUDA"),
        ([], "no rank given"),
    ],
)
def test_bad_svd_options_are_clean_errors(llama_pair, tmp_path, args, fragment):
    if fragment == "CUDA":
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    out = tmp_path / "never"
    result = invoke("svd", "-b", llama_pair.base, "-t", llama_pair.tuned, "-o", out, *args)
    assert_user_error(result, fragment)
    assert not out.exists()


def test_missing_model_is_a_clean_error(tmp_path):
    result = invoke(
        "svd", "-b", tmp_path / "nope", "-t", tmp_path / "nope2", "-r", "2", "-o", tmp_path / "o"
    )
    assert_user_error(result, "model not found")
    assert not (tmp_path / "o").exists()
    assert_user_error(invoke("delta", "-t", tmp_path), "no --base-model given")


def test_debug_env_shows_the_traceback(tmp_path, monkeypatch):
    from svdlora_cli.errors import ModelNotFoundError

    monkeypatch.setenv("SVDLORA_DEBUG", "1")
    args = ["svd", "-b", tmp_path / "nope", "-t", tmp_path / "nope", "-r", "2"]
    result = invoke(*args)
    assert result.exit_code == 1 and isinstance(result.exception, ModelNotFoundError)
    assert "Error: " not in result.stderr  # raised, not mapped to the one-line message
    # The console script itself prints the traceback and exits 1 (an error that is raised
    # before torch is imported, to keep the extra process cheap).
    out = subprocess.run(
        [sys.executable, "-m", "svdlora_cli", "delta", "-t", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" in out.stderr and "no --base-model given" in out.stderr, out.stderr[-3000:]
    assert not any(line.startswith("Hint: ") for line in out.stderr.splitlines())  # not mapped
    assert out.stdout == ""


def test_ctrl_c_stops_cleanly_and_keeps_finished_entries(llama_pair, tmp_path, monkeypatch):
    from svdlora_cli.spectra import svd_job

    real = svd_job.decompose
    done = []

    def interrupt_after_three(dw, k, **kwargs):
        if len(done) == 3:
            raise KeyboardInterrupt
        done.append(1)
        return real(dw, k, **kwargs)

    monkeypatch.setattr(svd_job, "decompose", interrupt_after_three)
    result = invoke(
        "svd", "-b", llama_pair.base, "-t", llama_pair.tuned, "-r", "2", "-o", tmp_path / "o"
    )
    assert (
        result.exit_code == 130
        and "Interrupted" in result.stderr
        and "Traceback" not in result.output
    )
    monkeypatch.setattr(svd_job, "decompose", real)
    doc = invoke_json(
        "svd", "-b", llama_pair.base, "-t", llama_pair.tuned, "-r", "2", "-o", tmp_path / "o"
    )
    assert doc["cache"] == {"hits": 3, "misses": 11}
