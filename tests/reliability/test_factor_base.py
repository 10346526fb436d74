"""Saved SVD factors meet the base they are trained on: fingerprint, depth and shapes checked;
train gives svd's warnings (rank clamped, dW = 0) in the terminal and in its JSON document."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from svdlora_cli.models.tiny import build_tiny_model
from tests.conftest import assert_user_error, invoke
from tests.reliability.conftest import COUNTS

RANK = "2"


def _teacher(base: Path, folder: Path, seed: int = 7) -> Path:
    """A copy of `base` with every projection nudged: a stand-in for a fine-tuned teacher."""
    shutil.copytree(base, folder)
    tensors = load_file(folder / "model.safetensors")
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in tensors.items():
        if name.endswith("proj.weight"):
            tensor.add_(0.05 * torch.randn(tensor.shape, generator=gen))
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def _factors(base: Path, root: Path, *extra: str) -> Path:
    """`svdlora svd` of (base, a teacher of it); the factors file it writes."""
    teacher = _teacher(base, root / f"{base.name}-teacher")
    result = invoke(
        "svd", "-b", base, "-t", teacher, "--rank", RANK, "-o", root / f"{base.name}-svd",
        "--no-plot", "--no-verify", "--json", *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return Path(json.loads(result.stdout)["artifacts"]["factors"])


def _train(base: Path, data: Path, out: Path, *extra: object):
    return invoke(
        "train", "-b", base, "--train-data", data, "--max-steps", "1", "--device", "cpu",
        "--max-length", "64", "-o", out, *extra,
    )  # fmt: skip


def _warnings(result) -> list[str]:
    """The `Warning:` lines on stderr (each warning is one soft-wrapped line)."""
    return [line for line in result.stderr.splitlines() if line.startswith("Warning: ")]


def _trained(result) -> dict:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_llm):
    """Factors of tiny_llm, of another base of the same shapes, of a shallower and of a
    wider base, and of tiny_llm written without a fingerprint (`svd --no-cache`)."""
    root = tmp_path_factory.mktemp("factor_base")
    other = build_tiny_model(root / "other-base", seed=1)
    shallow = build_tiny_model(root / "shallow-base", layers=1)
    wide = build_tiny_model(root / "wide-base", hidden=48)
    unrecorded = root / "unrecorded"
    unrecorded.mkdir()
    with pytest.MonkeyPatch.context() as env:  # the autouse isolation is per test
        env.setenv("SVDLORA_CACHE_DIR", str(root / "cache"))
        env.setenv("SVDLORA_NO_PROGRESS", "1")
        env.delenv("SVDLORA_CONFIG", raising=False)
        env.chdir(root)
        return {
            "own": _factors(tiny_llm, root),
            "other": _factors(other, root),
            "other_base": other,
            "shallow": _factors(shallow, root),
            "wide": _factors(wide, root),
            "unrecorded": _factors(tiny_llm, unrecorded, "--no-cache"),
        }


def test_factors_from_another_base_are_refused(world, tiny_llm, tiny_data, tmp_path):
    COUNTS["bad-input cases"] += 1
    result = _train(tiny_llm, tiny_data[0], tmp_path / "out", "--init", "svd", "--svd-factors",
                    world["other"], "--rank", RANK)  # fmt: skip
    assert_user_error(
        result, "were made from base", str(world["other_base"]), str(tiny_llm),
        "--allow-other-base",
    )  # fmt: skip
    fingerprints = [w for w in result.stderr.split("fingerprint ")[1:]]
    assert len(fingerprints) == 2 and all(len(f.split(")")[0]) == 12 for f in fingerprints)
    assert not (tmp_path / "out" / "final_model_svd").exists()


def test_allow_other_base_warns_and_trains(world, tiny_llm, tiny_data, tmp_path):
    COUNTS["bad-input cases"] += 1
    result = _train(tiny_llm, tiny_data[0], tmp_path / "out", "--init", "svd", "--svd-factors",
                    world["other"], "--rank", RANK, "--allow-other-base", "--json")  # fmt: skip
    doc = _trained(result)
    assert [a["init"] for a in doc["arms"]] == ["svd"]
    assert any("--allow-other-base uses them anyway" in w for w in doc["warnings"])
    assert any("--allow-other-base uses them anyway" in w for w in _warnings(result))
    assert (tmp_path / "out" / "final_model_svd").is_dir()


def test_factors_of_a_shallower_base_name_the_missing_modules(world, tiny_llm, tiny_data, tmp_path):
    COUNTS["bad-input cases"] += 1
    for extra in ((), ("--allow-other-base",)):  # only weights may differ, never the depth
        result = _train(tiny_llm, tiny_data[0], tmp_path / "out", "--init", "svd",
                        "--svd-factors", world["shallow"], "--rank", RANK, *extra)  # fmt: skip
        assert_user_error(result, "lack 7 module(s)", "model.layers.1.", "and 4 more")


def test_factors_of_other_shapes_are_refused_even_when_allowed(
    world, tiny_llm, tiny_data, tmp_path
):
    COUNTS["bad-input cases"] += 1
    result = _train(tiny_llm, tiny_data[0], tmp_path / "out", "--init", "svd", "--svd-factors",
                    world["wide"], "--rank", RANK, "--allow-other-base")  # fmt: skip
    assert_user_error(result, "the base weight is", "more module(s) differ")


def test_own_factors_train_without_base_warnings(world, tiny_llm, tiny_data, tmp_path):
    result = _train(tiny_llm, tiny_data[0], tmp_path / "out", "--init", "svd", "--svd-factors",
                    world["own"], "--rank", RANK, "--json")  # fmt: skip
    assert _trained(result)["warnings"] == [] and _warnings(result) == []


def test_factors_without_a_fingerprint_warn_that_they_are_unchecked(
    world, tiny_llm, tiny_data, tmp_path
):
    COUNTS["bad-input cases"] += 1
    result = _train(tiny_llm, tiny_data[0], tmp_path / "out", "--init", "svd", "--svd-factors",
                    world["unrecorded"], "--rank", RANK, "--json")  # fmt: skip
    doc = _trained(result)
    assert any("records no base fingerprint" in w for w in doc["warnings"])
    assert any("records no base fingerprint" in w for w in _warnings(result))


def test_rank_beyond_a_module_warns_as_svd_does(tiny_llm, tiny_data, tmp_path):
    COUNTS["bad-input cases"] += 1
    svd = invoke("svd", "-b", tiny_llm, "-t", _teacher(tiny_llm, tmp_path / "teacher"),
                 "--rank", "64", "-o", tmp_path / "svd", "--no-plot", "--no-verify")  # fmt: skip
    assert svd.exit_code == 0, svd.output
    said = [w for w in _warnings(svd) if "exceeds min(out, in)" in w]
    result = _train(tiny_llm, tiny_data[0], tmp_path / "out", "--rank", "64", "--json")
    doc = _trained(result)
    warned = [w for w in doc["warnings"] if "exceeds min(out, in)" in w]
    # Every target of the tiny Llama (32 wide, k/v 16 x 32) is narrower than 64.
    assert warned and warned[0].startswith("rank 64 exceeds min(out, in) of 14 module(s)")
    assert said and said[0].split(" (e.g.")[0] == "Warning: " + warned[0].split(" (e.g.")[0]
    assert [w for w in _warnings(result) if "exceeds min(out, in)" in w] == [
        "Warning: " + warned[0]
    ]


def test_teacher_equal_to_base_warns_that_dw_is_zero(tiny_llm, tiny_data, tmp_path):
    COUNTS["bad-input cases"] += 1
    result = _train(tiny_llm, tiny_data[0], tmp_path / "out", "--init", "svd", "--teacher-model",
                    tiny_llm, "--rank", RANK, "--json")  # fmt: skip
    doc = _trained(result)
    zero = [w for w in doc["warnings"] if "(dW = 0)" in w]
    assert zero and zero[0].startswith("14 target(s) did not change at all (dW = 0)")
    assert sum("(dW = 0)" in w for w in _warnings(result)) == 1
