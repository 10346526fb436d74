"""Values from svdlora.toml: train-teacher updates the file without losing a comment, and an
error about a value that came from the file names the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from svdlora_cli.workspace import tomllib
from tests.conftest import assert_user_error, invoke, invoke_json
from tests.reliability.conftest import COUNTS

FAST = ["--max-steps", "1", "--device", "cpu", "--max-length", "64"]

NOTES = (
    "# experiment notes: keep me\n"
    "rank = 4  # the rank we study\n"
    "\n"
    "# models\n"
    'teacher_model = "old/teacher"   # replaced by train-teacher\n'
    "\n"
    "[svd]\n"
    "# only for svd\n"
    "energy = 0.9\n"
)


def test_train_teacher_keeps_comments_and_order(tiny_llm, tiny_data, tmp_path):
    toml = tmp_path / "svdlora.toml"
    toml.write_text(NOTES)
    doc = invoke_json(
        "train-teacher", "-b", tiny_llm, "--train-data", tiny_data[0], "-o", tmp_path / "t", *FAST
    )
    final = doc["arms"][0]["artifacts"]["final_model"]
    assert Path(doc["workspace"]) == toml
    expected = NOTES.replace('"old/teacher"', json.dumps(final)).replace(
        "train-teacher\n",
        f"train-teacher\nbase_model = {json.dumps(str(tiny_llm))}\n"
        f"train_data = {json.dumps(str(tiny_data[0]))}\n",
    )
    assert toml.read_text() == expected  # every other line byte for byte, in its place
    values = tomllib.loads(toml.read_text())
    assert values["teacher_model"] == final and values["base_model"] == str(tiny_llm)
    assert values["rank"] == 4 and values["svd"] == {"energy": 0.9}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".svdlora.toml")] == []


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "svdlora.toml"
    path.write_text(text)
    return path


# (case, svdlora.toml text given the pair, arguments, fragments of the error)
CASES = [
    (
        "teacher deleted since",
        lambda p: f'base_model = "{p.base}"\nteacher_model = "runs/teacher"\nrank = 2\n',
        ["svd"],
        ["model not found: runs/teacher", "(teacher_model, set in"],
    ),
    (
        "base under the seed's key",
        lambda p: f'model_name = "gone/base/model"\nteacher_model = "{p.tuned}"\nrank = 2\n',
        ["svd"],
        ["model not found: gone/base/model", "(model_name, set in"],
    ),
    (
        "rank 0 in the command's table",
        lambda p: f'base_model = "{p.base}"\nteacher_model = "{p.tuned}"\n\n[svd]\nrank = 0\n',
        ["svd"],
        ["--rank must be a positive", "([svd] rank, set in"],
    ),
    (
        "output folder under a file",
        lambda p: (
            f'base_model = "{p.base}"\nteacher_model = "{p.tuned}"\n'
            'rank = 2\noutput_dir = "a_file/out"\n'
        ),
        ["svd"],
        ["not writable", "(output_dir, set in"],
    ),
]


@pytest.mark.parametrize(("case", "text", "args", "fragments"), CASES, ids=[c[0] for c in CASES])
def test_an_error_about_a_file_value_names_the_file(
    case, text, args, fragments, llama_pair, tmp_path
):
    (tmp_path / "a_file").write_text("x")
    toml = _file(tmp_path, text(llama_pair))
    result = invoke(*args)
    assert_user_error(result, *fragments, str(toml))
    hint = result.stderr.strip().splitlines()[-1]
    assert hint.startswith("Hint: ") and f"in {toml}" in hint, case
    COUNTS["bad-input cases"] += 1


def test_a_value_from_the_command_line_is_not_blamed_on_the_file(llama_pair, tmp_path):
    _file(tmp_path, f'base_model = "{llama_pair.base}"\nteacher_model = "{llama_pair.tuned}"\n')
    result = invoke("svd", "--rank", "2", "-t", "typed/by/hand")
    assert_user_error(result, "model not found: typed/by/hand")
    assert "svdlora.toml" not in result.stderr
    COUNTS["bad-input cases"] += 1


def test_an_explicit_config_file_is_the_one_named(llama_pair, tmp_path):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    toml = folder / "exp.toml"
    toml.write_text(f'base_model = "{llama_pair.base}"\nteacher_model = "nope/x/y"\nrank = 2\n')
    result = invoke("--config", toml, "svd")
    assert_user_error(result, "model not found: nope/x/y", f"(teacher_model, set in {toml})")
    COUNTS["bad-input cases"] += 1
