"""Odd inputs that used to end in a traceback: paths that are not valid UTF-8 (os.fsdecode of
b'...\\xff' gives a lone surrogate), and a tokenizer larger than the model's embedding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from svdlora_cli.errors import SvdloraError
from svdlora_cli.files import is_utf8, printable, write_text
from tests.conftest import assert_user_error, invoke, invoke_json, write_rows
from tests.launching import launch
from tests.reliability.conftest import COUNTS

ODD = "odd\udcff"  # what Python makes of the bytes b"odd\xff" in a path or argv


def test_printable_shows_the_bytes_as_a_shell_writes_them():
    assert printable("a/b") == "a/b" and is_utf8("a/b")
    assert not is_utf8(ODD) and printable(f"/tmp/{ODD}") == "/tmp/odd\\xff"
    assert printable("x\ud800") == "x\\ud800"  # a lone surrogate not from a byte


def _train(tiny_llm: Path, data: Path, *extra: object) -> list[object]:
    base = ["train", "-b", tiny_llm, "--train-data", data, "--max-steps", "1"]
    return [*base, "--device", "cpu", "--max-length", "64", *extra]


# (case, arguments given tmp_path and the inputs, option named in the error)
CASES = [
    (
        "svd base model",
        lambda t, p, m, d: ["svd", "--base-model", t / ODD, "-t", p.tuned, "--rank", "2"],
        "--base-model",
    ),
    (
        "svd output folder",
        lambda t, p, m, d: ["svd", "-b", p.base, "-t", p.tuned, "--rank", "2", "-o", t / ODD],
        "--output-dir",
    ),
    ("delta base model", lambda t, p, m, d: ["delta", "-b", t / ODD, "-t", p.tuned], "--base"),
    ("train output folder", lambda t, p, m, d: _train(m, d, "-o", t / ODD), "--output-dir"),
    ("train data file", lambda t, p, m, d: _train(m, t / ODD), "--train-data"),
    ("compare run folder", lambda t, p, m, d: ["compare", t / ODD], "RUN_DIR"),
    ("workspace file", lambda t, p, m, d: ["--config", t / ODD, "svd"], "--config"),
    ("include regex", lambda t, p, m, d: ["svd", "-b", p.base, "--include", ODD], "--include"),
]


@pytest.mark.parametrize(("case", "build", "option"), CASES, ids=[c[0] for c in CASES])
def test_a_non_utf8_path_is_one_clean_error(
    case, build, option, tmp_path, llama_pair, tiny_llm, tiny_data
):
    (tmp_path / ODD).mkdir()  # it exists: the name is the problem, not the path
    result = invoke(*build(tmp_path, llama_pair, tiny_llm, tiny_data[0]))
    assert_user_error(result, f"Error: {option}", "odd\\xff", "is not valid UTF-8", "rename it")
    assert list((tmp_path / ODD).iterdir()) == [], case  # refused before anything ran
    COUNTS["bad-input cases"] += 1


def test_a_non_utf8_path_from_the_environment_names_the_variable(monkeypatch, llama_pair, tmp_path):
    monkeypatch.setenv("SVDLORA_CACHE_DIR", str(tmp_path / ODD))
    result = invoke("svd", "-b", llama_pair.base, "-t", llama_pair.tuned, "--rank", "2")
    assert_user_error(result, "--cache-dir", "(from $SVDLORA_CACHE_DIR)", "odd\\xff")
    COUNTS["bad-input cases"] += 1


def test_a_non_utf8_path_in_a_real_process(tmp_path):
    """argv bytes, the console's own stream encodings: no UnicodeEncodeError anywhere."""
    done = launch(["svd", "--base-model", str(tmp_path / ODD), "-t", "x", "--rank", "2"])
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert lines[-2].startswith("Error: --base-model ") and "odd\\xff" in lines[-2]
    assert lines[-1].startswith("Hint: ")
    COUNTS["bad-input cases"] += 1


def test_a_non_utf8_working_folder_still_works(llama_pair, tmp_path, monkeypatch):
    """Relative outputs under a folder with an odd name: written, reported, no crash."""
    (tmp_path / ODD).mkdir()
    monkeypatch.chdir(tmp_path / ODD)
    doc = invoke_json("svd", "-b", llama_pair.base, "-t", llama_pair.tuned, "--rank", "2")
    assert Path(doc["artifacts"]["factors"]).is_file()
    table = invoke("delta", "-b", llama_pair.base, "-t", llama_pair.tuned, "-o", "d")
    assert table.exit_code == 0, table.output
    assert (tmp_path / ODD / "d" / "delta_report.txt").is_file()


def test_messages_documents_and_files_with_an_odd_path_never_raise(capsys, tmp_path):
    """The last line of defence: the error printer, the JSON / table emitter, text writes
    (pytest's capture is strict UTF-8, as a pipe is)."""
    from svdlora_cli.cli._output import emit
    from svdlora_cli.cli.app import show_error

    show_error(SvdloraError(f"cannot read /data/{ODD}", f"check /data/{ODD}"))
    err = capsys.readouterr().err
    assert "Error: cannot read /data/odd\\xff" in err and "Hint: check /data/odd\\xff" in err
    emit({"path": f"/data/{ODD}", "warnings": [f"odd {ODD}"]}, True, str)
    out = capsys.readouterr()
    assert json.loads(out.out)["path"] == "/data/odd\\xff" and "odd\\xff" in out.err
    emit({"path": Path(f"/data/{ODD}")}, False, lambda d: f"path: {d['path']}")
    assert "path: /data/odd\\xff" in capsys.readouterr().out
    report = write_text(tmp_path / "report.txt", f"model {ODD}\n")
    assert report.read_bytes() == b"model odd\\xff\n"


@pytest.fixture(scope="module")
def small_vocab_llm(tmp_path_factory) -> Path:
    """A tiny Llama with 40 embedding rows beside the ~100-token char tokenizer."""
    from transformers import AutoModelForCausalLM

    from svdlora_cli.models.tiny import char_tokenizer, tiny_config

    folder = tmp_path_factory.mktemp("smallvocab") / "model"
    config = tiny_config("llama", hidden=32, layers=2, vocab=40)
    config.pad_token_id, config.bos_token_id, config.eos_token_id = 0, 1, 2
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("command", ["train-teacher", "train"])
def test_a_tokenizer_larger_than_the_embedding_is_one_clean_error(
    command, small_vocab_llm, tmp_path
):
    data = write_rows(tmp_path / "rows.json", 4)
    args = [command, "-b", small_vocab_llm, "--train-data", data, "--max-steps", "1"]
    result = invoke(*args, "--device", "cpu", "--max-length", "64", "-o", tmp_path / "out")
    assert_user_error(result, "embedding", "tokenizer")
    assert "IndexError" not in result.stderr.splitlines()[-1]
    COUNTS["bad-input cases"] += 1


def test_a_run_folder_with_a_non_utf8_name_is_one_clean_error_in_compare(tmp_path):
    """compare finds logs on disk, past the argv check: their names reach tables and plots."""
    runs = tmp_path / "runs"
    (runs / ODD).mkdir(parents=True)
    (runs / ODD / "training_log_random.csv").write_text("step,train_loss\n0,1.0\n")
    result = invoke("compare", str(runs))
    assert_user_error(result, "Error: run log", "odd\\xff", "not valid UTF-8", "rename")
    COUNTS["bad-input cases"] += 1
