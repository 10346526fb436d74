"""A verdict carried from a PEFT-checked adapter to a sibling at another rank: only to an
adapter of the same format whose every module equals its factors, never to a broken one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from svdlora_cli.adapters.factors import load_factors
from svdlora_cli.adapters.sibling import carried_verdict, sibling_record
from svdlora_cli.workflows import svd_warm
from tests.conftest import invoke_json

WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"


@pytest.fixture(scope="module")
def runs(qwen2_pair, tmp_path_factory, request) -> dict:
    """Rank 4 checked through PEFT without the probe, and rank 2 by the full path."""
    root = tmp_path_factory.mktemp("sibling")
    patch = pytest.MonkeyPatch()
    patch.setattr(svd_warm, "_ENABLED", False)
    request.addfinalizer(patch.undo)
    docs = {}
    for rank in (4, 2):
        docs[rank] = invoke_json(
            "svd", "-b", qwen2_pair.base, "-t", qwen2_pair.tuned, "-o", root / f"r{rank}",
            "--rank", rank, "--no-probe", "--no-plot", "--cache-dir", root / "cache",
        )  # fmt: skip
    verdict = {
        k: v for k, v in docs[4]["verification"].items() if k not in ("probe_reason", "cached")
    }
    return {
        "sibling": sibling_record(root / "r4" / "adapter_rank4", verdict),
        "adapter": root / "r2" / "adapter_rank2",
        "factors": load_factors(root / "r2" / "svd_factors_rank2.safetensors"),
        "verdict": verdict,
    }


def _copy(runs: dict, tmp_path: Path) -> Path:
    folder = tmp_path / "adapter"
    shutil.copytree(runs["adapter"], folder)
    return folder


def test_a_sibling_of_the_same_format_carries_the_verdict(runs):
    carried = carried_verdict(runs["adapter"], runs["sibling"], runs["factors"])
    assert carried is not None and carried["carried_from"]["rank"] == 4
    deltas = carried["structural"]["deltas"]
    assert deltas["checked"] == runs["verdict"]["structural"]["deltas"]["checked"]
    assert deltas["max_rel_diff"] < 1e-6 and deltas["tolerance"] == 1e-4


def _edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / CONFIG).read_text())
    (folder / CONFIG).write_text(json.dumps({**config, **changes}))


def _edit_weights(folder: Path, edit) -> None:
    tensors = load_file(str(folder / WEIGHTS))
    edit(tensors)
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})


def _bend(tensors: dict) -> None:
    key = sorted(k for k in tensors if k.endswith("lora_B.weight"))[-1]
    tensors[key] = tensors[key] * np.float32(1.01)  # 1%: 100x the tolerance


def _drop(tensors: dict) -> None:
    module = sorted(k for k in tensors if k.endswith("lora_A.weight"))[0]
    del tensors[module], tensors[module.replace("lora_A", "lora_B")]


def _swap(tensors: dict) -> None:  # each factor in the other's place, transposed to fit
    for key in [k for k in tensors if k.endswith("lora_A.weight")]:
        other = key.replace("lora_A", "lora_B")
        tensors[key], tensors[other] = tensors[other].T.copy(), tensors[key].T.copy()


def _half_precision(tensors: dict) -> None:
    for key in tensors:
        tensors[key] = tensors[key].astype(np.float16)


BROKEN = {
    "doubled-alpha": lambda f: _edit_config(f, lora_alpha=4),
    "rslora": lambda f: _edit_config(f, use_rslora=True),
    "rank-pattern": lambda f: _edit_config(f, rank_pattern={"q_proj": 2}),
    "other-targets": lambda f: _edit_config(f, target_modules=["q_proj"]),
    "bent-module": lambda f: _edit_weights(f, _bend),
    "dropped-module": lambda f: _edit_weights(f, _drop),
    "swapped-factors": lambda f: _edit_weights(f, _swap),
    "fp16-weights": lambda f: _edit_weights(f, _half_precision),
    "no-weights": lambda f: (f / WEIGHTS).unlink(),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_or_other_format_sibling_carries_nothing(case, runs, tmp_path):
    folder = _copy(runs, tmp_path)
    BROKEN[case](folder)
    assert carried_verdict(folder, runs["sibling"], runs["factors"]) is None


def test_other_factors_carry_nothing(runs):
    """The bytes must equal the factors they were cut from, not any factors."""
    factors = dict(runs["factors"])
    name = sorted(factors)[0]
    f = factors[name]
    factors[name] = type(f)(B=f.B * 1.01, A=f.A, S=f.S)
    assert carried_verdict(runs["adapter"], runs["sibling"], factors) is None


def test_only_peft_checks_without_the_probe_carry(runs):
    adapter = runs["sibling"]["verdict"]
    assert sibling_record(runs["adapter"], {**adapter, "probe": {"ok": True}}) is None
    carried = carried_verdict(runs["adapter"], runs["sibling"], runs["factors"])
    assert sibling_record(runs["adapter"], carried) is None  # a carried verdict carries no further
