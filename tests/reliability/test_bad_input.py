"""Every bad input: exit 1, one Error line with its cause, a Hint, no traceback, no files left."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from svdlora_cli.store.cache import ArtifactCache
from tests.conftest import assert_user_error, invoke
from tests.reliability.conftest import COUNTS


@dataclass
class World:
    """Inputs the cases are built from, made once per test in tmp_path."""

    root: Path
    llama: object
    gpt2: object
    tiny_llm: Path
    data: Path

    def copy(self, source: Path, name: str) -> Path:
        target = self.root / name
        shutil.copytree(source, target)
        return target

    def edit_weights(self, folder: Path, edit: Callable[[dict], None]) -> Path:
        tensors = load_file(folder / "model.safetensors")
        edit(tensors)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        return folder

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text)
        return path


def _svd(world: World, base: object, tuned: object, *extra: str) -> list[str]:
    return ["svd", "-b", str(base), "-t", str(tuned), "--rank", "2", *extra]


def _train(world: World, *extra: str) -> list[str]:
    return [
        "train",
        "-b",
        str(world.tiny_llm),
        "--train-data",
        str(world.data),
        "--max-steps",
        "1",
        "--device",
        "cpu",
        "--max-length",
        "64",
        *extra,
    ]


def _truncated(w: World) -> list[str]:
    folder = w.copy(w.llama.tuned, "cut")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) - 100])
    return _svd(w, w.llama.base, folder)


def _bad_header(w: World) -> list[str]:
    folder = w.copy(w.llama.tuned, "badheader")
    (folder / "model.safetensors").write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"0" * 64
    )
    return _svd(w, w.llama.base, folder)


def _shape_mismatch(w: World) -> list[str]:
    folder = w.copy(w.llama.tuned, "shapes")
    name = "model.layers.0.mlp.up_proj.weight"
    return _svd(
        w, w.llama.base, w.edit_weights(folder, lambda t: t.update({name: t[name][:, :16].clone()}))
    )


def _one_sided(w: World) -> list[str]:
    folder = w.copy(w.llama.tuned, "onesided")
    return _svd(
        w,
        w.llama.base,
        w.edit_weights(folder, lambda t: t.pop("model.layers.1.self_attn.q_proj.weight")),
    )


def _nan(w: World) -> list[str]:
    folder = w.copy(w.llama.tuned, "nan")

    def poison(t: dict) -> None:
        for name, tensor in t.items():
            if name.endswith("proj.weight"):
                tensor[0, 0] = float("nan")

    return _svd(w, w.llama.base, w.edit_weights(folder, poison))


def _unwritable(w: World) -> list[str]:
    blocker = w.write("a_file", "x")
    return _svd(w, w.llama.base, w.llama.tuned, "-o", str(blocker / "out"))


def _foreign_factors(w: World) -> list[str]:
    cache = ArtifactCache(None)
    from svdlora_cli.artifacts import write_svd_outputs
    from svdlora_cli.spectra.svd_step import run_svd

    result = run_svd(str(w.gpt2.base), str(w.gpt2.tuned), cache, rank=2)
    doc = write_svd_outputs(result, w.root / "gpt2-factors", "b", "t", plot=False)
    return _train(
        w, "--init", "svd", "--svd-factors", doc["artifacts"]["factors"], "--lora-rank", "2"
    )


def _wrong_shape_factors(w: World) -> list[str]:
    module = "model.layers.0.self_attn.q_proj"
    factors = {
        f"{module}.B": torch.zeros(16, 2),
        f"{module}.A": torch.zeros(2, 32),
        f"{module}.S": torch.ones(2),
    }
    path = w.root / "bad_factors.safetensors"
    save_file(factors, path)
    return _train(w, "--init", "svd", "--svd-factors", str(path), "--lora-rank", "2")


def _remote_code(w: World) -> list[str]:
    folder = w.copy(w.tiny_llm, "remote")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    return ["train", "-b", str(folder), "--train-data", str(w.data), "--device", "cpu"]


# (case, command builder, expected fragment of the error)
CASES: list[tuple[str, Callable[[World], list[str]], str]] = [
    ("missing path", lambda w: _svd(w, w.root / "nope", w.llama.tuned), "model not found"),
    (
        "folder without weights",
        lambda w: _svd(w, (w.root / "empty").mkdir() or w.root / "empty", w.llama.tuned),
        "no weights found",
    ),
    ("truncated safetensors", _truncated, "truncated"),
    ("corrupt safetensors header", _bad_header, "header"),
    ("different architectures", lambda w: _svd(w, w.llama.base, w.gpt2.tuned), "but tuned is"),
    ("mismatched shapes", _shape_mismatch, "shapes differ"),
    ("tensor in one model only", _one_sided, "exists only in the base"),
    ("NaN in a delta", _nan, "NaN/Inf"),
    (
        "rank 0",
        lambda w: _svd(w, w.llama.base, w.llama.tuned, "--rank", "0"),
        "--rank must be a positive",
    ),
    (
        "negative rank",
        lambda w: _svd(w, w.llama.base, w.llama.tuned, "--rank", "-4"),
        "--rank must be a positive",
    ),
    (
        "rank and energy together",
        lambda w: _svd(w, w.llama.base, w.llama.tuned, "--energy", "0.9"),
        "exclusive",
    ),
    (
        "energy outside (0, 1]",
        lambda w: ["svd", "-b", str(w.llama.base), "-t", str(w.llama.tuned), "--energy", "1.01"],
        "--energy must be in (0, 1]",
    ),
    (
        "include matching nothing",
        lambda w: _svd(w, w.llama.base, w.llama.tuned, "--include", "zzz"),
        "no LoRA target",
    ),
    ("unwritable output folder", _unwritable, "not writable"),
    (
        "empty data file",
        lambda w: _train(w, "--train-data", str(w.write("empty.json", ""))),
        "is empty",
    ),
    (
        "data not JSON",
        lambda w: _train(w, "--train-data", str(w.write("bad.json", "[{oops"))),
        "not valid JSON",
    ),
    (
        "missing field",
        lambda w: _train(w, "--train-data", str(w.write("m.json", '[{"question": "q"}]'))),
        "row 1: field 'answer' is missing",
    ),
    (
        "empty field",
        lambda w: _train(
            w, "--train-data", str(w.write("e.json", '[{"question": "q", "answer": ""}]'))
        ),
        "row 1: field 'answer' is empty",
    ),
    ("every row too long", lambda w: _train(w, "--max-length", "8"), "every row is longer"),
    ("factors from another model", _foreign_factors, "does not have"),
    ("factors with wrong shapes", _wrong_shape_factors, "the base weight is"),
    ("svd init without factors", lambda w: _train(w, "--init", "svd"), "--svd-factors"),
    ("unknown device", lambda w: _svd(w, w.llama.base, w.llama.tuned, "--device", "npu"), "device"),
    ("trust_remote_code model", _remote_code, "trust_remote_code"),
    # Numeric options that parse but mean nothing: each has a range check.
    ("learning rate inf", lambda w: _train(w, "--learning-rate", "inf"), "--learning-rate must"),
    ("learning rate 0", lambda w: _train(w, "--learning-rate", "0"), "--learning-rate must"),
    ("lora alpha nan", lambda w: _train(w, "--lora-alpha", "nan"), "--lora-alpha must"),
    ("lora dropout 1", lambda w: _train(w, "--lora-dropout", "1"), "--lora-dropout must"),
    ("weight decay -1", lambda w: _train(w, "--weight-decay", "-1"), "--weight-decay must"),
    ("weight decay nan", lambda w: _train(w, "--weight-decay", "nan"), "--weight-decay must"),
    ("max length 1", lambda w: _train(w, "--max-length", "1"), "--max-length must"),
    ("warmup -1", lambda w: _train(w, "--warmup-steps", "-1"), "--warmup-steps must"),
    ("eval limit 0", lambda w: _train(w, "--eval-limit", "0"), "--eval-limit must"),
    ("train rank 0", lambda w: _train(w, "--rank", "0"), "--rank must"),
    (
        "energy nan",
        lambda w: ["svd", "-b", str(w.llama.base), "-t", str(w.llama.tuned), "--energy", "nan"],
        "--energy must",
    ),
    (
        "oversample -1",
        lambda w: _svd(w, w.llama.base, w.llama.tuned, "--oversample", "-1"),
        "--oversample must",
    ),
    (
        "power iterations -1",
        lambda w: _svd(w, w.llama.base, w.llama.tuned, "--power-iters", "-1"),
        "--power-iters must",
    ),
    (
        "intruder k 0",
        lambda w: [
            "layer-report",
            *("-b", str(w.llama.base), "-t", str(w.llama.tuned)),
            *("--intruders", "--intruder-k", "0"),
        ],
        "--intruder-k",
    ),
    (
        "sweep rank 0",
        lambda w: ["sweep", "-b", str(w.llama.base), "-t", str(w.llama.tuned), "--ranks", "0,4"],
        "positive ranks",
    ),
    (
        "target loss nan",
        lambda w: ["compare", str(w.root), "--target-loss", "nan"],
        "--target-loss",
    ),
    ("no new tokens", lambda w: ["compare", str(w.root), "--max-new-tokens", "0"], "--max-new"),
    ("demo rank 0", lambda w: ["demo", "--quick", "--rank", "0"], "--rank must"),
    ("demo epochs 0", lambda w: ["demo", "--quick", "--student-epochs", "0"], "--epochs must"),
]
if not torch.cuda.is_available():
    CASES.append(
        (
            "cuda without CUDA",
            lambda w: _svd(w, w.llama.base, w.llama.tuned, "--device", "cuda"),
            "CUDA",
        )
    )


@pytest.mark.parametrize(("case", "build", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clean_error(
    case, build, fragment, tmp_path, llama_pair, gpt2_pair, tiny_llm, tiny_data
):
    world = World(tmp_path / "inputs", llama_pair, gpt2_pair, tiny_llm, tiny_data[0])
    world.root.mkdir()
    args = build(world)
    out = tmp_path / "out"
    if "-o" not in args:
        args += ["-o", str(out)]
    result = invoke(*args, "--cache-dir", str(tmp_path / "cache"))
    assert_user_error(result, fragment)
    assert not out.exists() or not any(out.iterdir()), case
    cache = (
        ArtifactCache(tmp_path / "cache") if (tmp_path / "cache").exists() else ArtifactCache(None)
    )
    assert [e for e in cache.entries() if e["kind"] == "svd"] == [], case
    COUNTS["bad-input cases"] += 1


def test_zero_delta_is_reported_not_divided(llama_pair, tmp_path):
    result = invoke(
        "svd",
        "-b",
        llama_pair.base,
        "-t",
        llama_pair.base,
        "--rank",
        "2",
        "-o",
        tmp_path / "o",
        "--json",
    )
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["summary"]["zero_modules"] == 14 and all(m["energy"] == 1.0 for m in doc["modules"])
    assert "did not change at all" in result.stderr


def test_rank_above_min_dimension_is_clamped_with_a_warning(llama_pair, tmp_path):
    result = invoke(
        "svd",
        "-b",
        llama_pair.base,
        "-t",
        llama_pair.tuned,
        "--rank",
        "99",
        "-o",
        tmp_path,
        "--json",
    )
    assert result.exit_code == 0 and "clamped to their full rank" in result.stderr
    assert max(m["rank"] for m in json.loads(result.stdout)["modules"]) == 32
