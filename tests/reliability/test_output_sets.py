"""An output set appears whole or not at all, and one folder takes one run at a time."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from svdlora_cli import artifacts
from svdlora_cli.output_sets import STAGING_PREFIX, locked_output, staged
from tests.conftest import assert_user_error, invoke, invoke_json
from tests.reliability.conftest import COUNTS


def _svd(pair, out: Path, *extra: str) -> tuple[str, ...]:
    return (
        "svd",
        "-b",
        str(pair.base),
        "-t",
        str(pair.tuned),
        "--rank",
        "2",
        "-o",
        str(out),
        *extra,
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_a_second_run_into_a_busy_folder_is_refused(llama_pair, tmp_path):
    out = tmp_path / "out"
    with locked_output(out):  # another run is writing here
        result = invoke(*_svd(llama_pair, out))
    assert_user_error(result, "is busy", "another --output-dir")
    assert not any(out.iterdir()) if out.exists() else True
    COUNTS["faults handled"] += 1


def test_a_failure_while_writing_leaves_the_previous_outputs(llama_pair, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = invoke_json(*_svd(llama_pair, out))
    before = _files(out)

    def full_disk(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifacts, "svd_analysis_png", full_disk)
    result = invoke(*_svd(llama_pair, out, "--seed", "1"))
    assert_user_error(result, "no space left on device")
    assert _files(out) == before  # the old set, whole; no staging folder left
    assert not list(out.glob(f"{STAGING_PREFIX}*"))
    assert json.loads((out / "svd_analysis_rank2.json").read_text())["rank"] == first["rank"]
    COUNTS["faults handled"] += 1


def test_two_runs_with_different_teachers_never_mix(llama_pair, qwen2_pair, tmp_path):
    out = tmp_path / "out"
    invoke_json(*_svd(llama_pair, out))
    doc = invoke_json(*_svd(qwen2_pair, out))
    analysis = json.loads((out / "svd_analysis_rank2.json").read_text())
    config = json.loads((out / "run_config.json").read_text())
    assert analysis["tuned_model"] == doc["tuned_model"] == str(qwen2_pair.tuned)
    assert config["options"]["teacher_model"] == str(qwen2_pair.tuned)
    from safetensors import safe_open

    with safe_open(out / "svd_factors_rank2.safetensors", "pt") as f:
        assert f.metadata()["tuned_model"] == str(qwen2_pair.tuned)
    adapter = json.loads((out / "adapter_rank2" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(qwen2_pair.base)


def test_staging_left_by_a_killed_run_is_removed_by_the_next(tmp_path):
    out = tmp_path / "out"
    (out / f"{STAGING_PREFIX}dead").mkdir(parents=True)
    (out / f"{STAGING_PREFIX}dead" / "half.json").write_text("{")
    with locked_output(out), staged(out, out / "doc.json") as at:
        at(out / "doc.json").write_text("{}")
        at(out / "report.txt").write_text("r")
    assert sorted(p.name for p in out.iterdir()) == ["doc.json", "report.txt"]
    COUNTS["faults handled"] += 1


def test_a_failed_set_removes_its_staging_and_keeps_the_old_folder(tmp_path):
    out = tmp_path / "out"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "old.bin").write_text("old")
    with pytest.raises(RuntimeError), staged(out, out / "doc.json") as at:
        at(out / "adapter").mkdir()
        (at(out / "adapter") / "new.bin").write_text("new")
        raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["adapter"]
    assert (out / "adapter" / "old.bin").read_text() == "old"
    # A successful set swaps whole folders: nothing of the old adapter remains.
    with staged(out, out / "doc.json") as at:
        at(out / "adapter").mkdir()
        (at(out / "adapter") / "new.bin").write_text("new")
    assert sorted(p.name for p in (out / "adapter").iterdir()) == ["new.bin"]


def test_non_finite_weights_are_never_written(tmp_path):
    import torch

    from svdlora_cli.adapters.factors import LowRankFactors, save_factors
    from svdlora_cli.errors import NonFiniteOutputError

    bad = LowRankFactors(B=torch.tensor([[float("inf")]]), A=torch.ones(1, 1), S=torch.ones(1))
    with pytest.raises(NonFiniteOutputError, match="NaN or Inf"):
        save_factors(tmp_path / "f.safetensors", {"m": bad}, {})
    assert not (tmp_path / "f.safetensors").exists()


def test_run_config_of_one_command_is_never_overwritten_by_another(tmp_path):
    from svdlora_cli.files import write_run_config

    first = write_run_config(tmp_path, "train", {"rank": 4}, {})
    again = write_run_config(tmp_path, "train", {"rank": 8}, {})  # a rerun replaces its own
    other = write_run_config(tmp_path, "compare", {}, {})
    assert first == again == tmp_path / "run_config.json"
    assert other == tmp_path / "run_config_compare.json"
    assert json.loads(first.read_text())["options"] == {"rank": 8}
    assert json.loads(other.read_text())["command"] == "compare"
    COUNTS["faults handled"] += 1
