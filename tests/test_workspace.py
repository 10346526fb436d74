"""svdlora.toml: defaults for every option, the command line always wins."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import assert_user_error, invoke, invoke_json


def test_init_then_svd_needs_no_model_flags(llama_pair, tmp_path):
    doc = invoke_json(
        "init",
        "--base-model",
        llama_pair.base,
        "--teacher-model",
        llama_pair.tuned,
        "--rank",
        "2",
        "--output-dir",
        "runs",
    )
    assert Path(doc["workspace"]) == tmp_path / "svdlora.toml"
    result = invoke_json("svd")
    assert result["rank"] == 2 and result["base_model"] == str(llama_pair.base)
    assert Path(result["artifacts"]["adapter"]) == tmp_path / "runs" / "adapter_rank2"
    assert invoke_json("svd", "--rank", "3")["rank"] == 3  # the command line wins
    assert len(invoke_json("delta")["modules"]) == 14


def test_command_tables_and_explicit_config(llama_pair, tmp_path):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "exp.toml").write_text(
        f'base_model = "{llama_pair.base}"\nteacher_model = "{llama_pair.tuned}"\n'
        'output_dir = "out"\n\n[svd]\nrank = 1\ninclude = ["q_proj"]\n'
    )
    result = invoke("--config", folder / "exp.toml", "svd", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["rank"] == 1 and len(doc["modules"]) == 2
    assert Path(doc["artifacts"]["factors"]).parent == folder / "out"  # relative to the file


def test_unknown_keys_and_bad_toml_are_errors(tmp_path):
    (tmp_path / "svdlora.toml").write_text("rnak = 16\n")
    assert_user_error(invoke("svd", "--rank", "2"), "rnak")
    (tmp_path / "svdlora.toml").write_text("rank = \n")
    assert_user_error(invoke("svd"), "svdlora.toml")
    assert_user_error(invoke("--config", tmp_path / "missing.toml", "svd"), "not found")


def test_init_refuses_to_overwrite(llama_pair, tmp_path):
    invoke_json("init", "-b", llama_pair.base)
    assert_user_error(invoke("init", "-b", llama_pair.base), "already exists")
    assert (
        invoke_json("init", "-b", llama_pair.base, "--rank", "4", "--force")["values"]["rank"] == 4
    )


def test_the_seeds_keys_mean_the_same_as_the_vocabulary(llama_pair, tmp_path):
    (tmp_path / "svdlora.toml").write_text(
        f'model_name = "{llama_pair.base}"\nteacher_model = "{llama_pair.tuned}"\nlora_rank = 2\n'
    )
    doc = invoke_json("svd")
    assert doc["base_model"] == str(llama_pair.base) and doc["rank"] == 2
    (tmp_path / "svdlora.toml").write_text(
        f'model_name = "{llama_pair.base}"\nbase_model = "{llama_pair.base}"\n'
    )
    assert_user_error(invoke("svd", "--rank", "2"), "base_model is set twice", "model_name")
