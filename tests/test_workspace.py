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


COMMENTED = (
    "# my experiment: keep this\n"
    "\n"
    'model_name = "old/base"   # the seed\'s key, kept\n'
    "rank = 8\n"
    "include = [\n"
    '  "q_proj",  # queries\n'
    '  "v_proj",\n'
    "]\n"
    "\n"
    "# per-command settings\n"
    "[svd]\n"
    "energy = 0.9 # a comment\n"
    "\n"
    "[train]\n"
    "# nothing yet\n"
)


def test_edit_toml_keeps_every_other_line_byte_for_byte():
    from svdlora_cli.workspace import edit_toml, tomllib

    new = edit_toml(
        COMMENTED,
        {
            None: {"base_model": "new/base", "teacher_model": 'runs/"t"', "eval_data": None},
            "svd": {"energy": 0.5, "rank": 3},
            "train": {"rank": 4},
            "demo": {"quick": True},
        },
    )
    assert new.splitlines() == [
        "# my experiment: keep this",
        "",
        'model_name = "new/base"   # the seed\'s key, kept',  # an alias is set in place
        "rank = 8",
        "include = [",
        '  "q_proj",  # queries',
        '  "v_proj",',
        "]",
        'teacher_model = "runs/\\"t\\""',  # new keys: after the table's last key
        "",
        "# per-command settings",
        "[svd]",
        "energy = 0.5 # a comment",
        "rank = 3",
        "",
        "[train]",
        "rank = 4",
        "# nothing yet",
        "",
        "[demo]",  # a new table at the end
        "quick = true",
    ]
    parsed = tomllib.loads(new)
    assert parsed["model_name"] == "new/base" and parsed["teacher_model"] == 'runs/"t"'
    assert parsed["svd"] == {"energy": 0.5, "rank": 3} and "eval_data" not in parsed


def test_edit_toml_line_ends_and_multiline_values():
    from svdlora_cli.workspace import edit_toml

    assert edit_toml("a = 1\r\nb = 'x#y' # c\r\n", {None: {"b": "z", "c": 2}}) == (
        'a = 1\r\nb = "z" # c\r\nc = 2\r\n'
    )
    assert edit_toml("a = 1", {None: {"a": 2}}) == "a = 2"  # no final line end: still none
    assert edit_toml('a = """x\n# no comment\n""" # real\n', {None: {"a": "q"}}) == (
        'a = "q" # real\n'
    )
    assert edit_toml("# top\n\n[svd]\nrank = 2\n", {None: {"base_model": "b"}}) == (
        '# top\nbase_model = "b"\n\n[svd]\nrank = 2\n'
    )
    assert edit_toml("", {None: {"rank": 1}, "svd": {"rank": 2}}) == "rank = 1\n\n[svd]\nrank = 2\n"


def test_edit_toml_refuses_rather_than_writing_a_wrong_file():
    import pytest

    from svdlora_cli.errors import ConfigError
    from svdlora_cli.workspace import edit_toml

    with pytest.raises(ConfigError, match="would not read back") as info:
        edit_toml("svd.rank = 1\n", {"svd": {"rank": 2}})  # a dotted key: no line to edit
    assert "[svd] rank = 2" in info.value.hint
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        edit_toml("a = 1\n", {None: {"b": "x\udcff"}})


def test_update_workspace_writes_atomically_and_keeps_the_mode(tmp_path):
    import os

    from svdlora_cli.workspace import update_workspace

    path = tmp_path / "svdlora.toml"
    path.write_text(COMMENTED)
    os.chmod(path, 0o640)
    update_workspace(path, {"rank": 16})
    assert path.read_text() == COMMENTED.replace("rank = 8", "rank = 16")
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["svdlora.toml"]  # no temp file left
    update_workspace(tmp_path / "new.toml", {"rank": 2}, {"svd": {"energy": 0.5}})
    assert load_values(tmp_path / "new.toml") == {"rank": 2, "svd": {"energy": 0.5}}


def load_values(path: Path) -> dict:
    from svdlora_cli.workspace import tomllib

    return tomllib.loads(path.read_text())


def test_key_in_file_names_the_line_that_set_an_option(tmp_path):
    from svdlora_cli.workspace import key_in_file

    path = tmp_path / "svdlora.toml"
    path.write_text('model_name = "b"\nrank = 2\n\n[svd]\nrank = 3\n')
    assert key_in_file(path, "svd", "rank") == "[svd] rank"
    assert key_in_file(path, "train", "rank") == "rank"
    assert key_in_file(path, "svd", "base_model") == "model_name"
