"""`svdlora verify` trusts nothing it reads: an adapter whose config disagrees with its
tensors, a cut-short weight file, an adapter for fewer layers or for another base each end
in one Error line and one Hint line (no traceback, no PEFT warning, never "ok"), and a
wrong base gets a Hint naming the base the adapter was made for, not "regenerate"."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from tests.conftest import assert_user_error, invoke, invoke_json
from tests.reliability.conftest import COUNTS


def _save_model(folder: Path, hidden: int = 32, layers: int = 2, arch: str = "llama") -> Path:
    """A base of the test pairs' family (vocab 96) with other layers or width."""
    import torch
    from transformers import AutoModelForCausalLM

    from svdlora_cli.models.tiny import tiny_config

    torch.manual_seed(0)
    config = tiny_config(arch, hidden=hidden, layers=layers, vocab=96)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


@dataclass
class Bases:
    """The adapter `svd` made for `made_for`, and bases it was not made for."""

    adapter: Path
    made_for: Path
    deeper: Path  # same hidden size, 4 layers instead of 2
    wider: Path  # hidden size 64
    gpt2: Path  # another architecture


@pytest.fixture(scope="module")
def bases(llama_pair, tmp_path_factory) -> Bases:
    from svdlora_cli.artifacts import write_svd_outputs
    from svdlora_cli.spectra.svd_step import run_svd
    from svdlora_cli.store.cache import ArtifactCache

    root = tmp_path_factory.mktemp("verify-trust")
    base, tuned = str(llama_pair.base), str(llama_pair.tuned)
    result = run_svd(base, tuned, ArtifactCache(root / "cache"), rank=2)
    doc = write_svd_outputs(result, root / "out", base, tuned, plot=False)
    return Bases(
        Path(doc["artifacts"]["adapter"]),
        llama_pair.base,
        _save_model(root / "deeper", layers=4),
        _save_model(root / "wider", hidden=64),
        _save_model(root / "gpt2", arch="gpt2"),
    )


def _edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **changes}))


def _cut_short(folder: Path) -> None:
    data = (folder / "adapter_model.safetensors").read_bytes()
    (folder / "adapter_model.safetensors").write_bytes(data[: len(data) - 100])


def _drop_one_b(folder: Path) -> None:
    tensors = load_file(folder / "adapter_model.safetensors")
    key = next(k for k in sorted(tensors) if k.endswith("lora_B.weight"))
    del tensors[key]
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})


ALL = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
# (case, plant on the adapter copy, which base (None: the one it names), Error and Hint parts)
Case = tuple[str, Callable[[Path], None], str | None, tuple[str, ...], tuple[str, ...]]
CASES: list[Case] = [
    (
        "config r disagrees with the tensors",
        lambda f: _edit_config(f, r=4, lora_alpha=4),
        None,
        ("gives r = 4", "config 4, tensors 2", "(and 11 more)"),
        ("r / rank_pattern",),
    ),
    (
        "target_modules leaves out modules with tensors",
        lambda f: _edit_config(f, target_modules=["q_proj", "k_proj"]),
        None,
        ("target_modules", "leaves out 10 of the 14 modules", "model.layers.0.mlp.down_proj"),
        ("add them to target_modules",),
    ),
    (
        "target_modules lists a module without tensors",
        lambda f: _edit_config(f, target_modules=[*ALL, "lm_head"]),
        None,
        ("holds no weights for 1 of the 15 modules", "(lm_head)"),
        ("regenerate",),
    ),
    (
        "truncated weight file",
        _cut_short,
        None,
        ("adapter_model.safetensors is truncated",),
        ("truncated or corrupt",),
    ),
    (
        "corrupt weight header",
        lambda f: (f / "adapter_model.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"{bad"),
        None,
        ("adapter_model.safetensors",),
        ("truncated or corrupt",),
    ),
    (
        "half a LoRA pair",
        _drop_one_b,
        None,
        ("only one of lora_A / lora_B for 1 module(s)",),
        ("regenerate",),
    ),
    (
        "config is not JSON",
        lambda f: (f / "adapter_config.json").write_text("{r: 2"),
        None,
        ("adapter_config.json as JSON",),
        ("adapter_config.json",),
    ),
    (
        "adapter for fewer layers",
        lambda f: None,
        "deeper",
        (
            "no weights for 14 of the 28 modules",
            "model.layers.2.",
            "covers 2 layers, the base has 4",
        ),
        ("pass the base model the adapter was made for",),
    ),
    (
        "adapter for a wider base",
        lambda f: None,
        "wider",
        ("14 adapter module(s) do not fit their layer", "A[2, 64] B[32, 2]"),
        ("pass the base model the adapter was made for",),
    ),
    (
        "adapter for another architecture",
        lambda f: None,
        "gpt2",
        ("PEFT wraps none of the adapter's modules",),
        ("pass the base model the adapter was made for",),
    ),
    (
        "fewer layers, no base recorded",
        lambda f: _edit_config(f, base_model_name_or_path=None),
        "deeper",
        ("no weights for 14 of the 28 modules",),
        ("records none in base_model_name_or_path",),
    ),
]


def _hint(result) -> str:
    return next(line for line in result.stderr.splitlines() if line.startswith("Hint: "))


@pytest.mark.parametrize(
    ("case", "plant", "base", "error", "hint"), CASES, ids=[c[0] for c in CASES]
)
def test_untrustworthy_adapter_is_one_clean_error(bases, tmp_path, case, plant, base, error, hint):
    adapter = tmp_path / "adapter"
    shutil.copytree(bases.adapter, adapter)
    plant(adapter)
    given = bases.made_for if base is None else getattr(bases, base)
    result = invoke("verify", adapter, "-b", given)
    assert_user_error(result, *error)
    assert all(part in _hint(result) for part in hint), _hint(result)
    assert "UserWarning" not in result.output and "missing adapter keys" not in result.output
    if base is not None:  # a wrong base: name the right one, don't send them to regenerate
        assert "regenerate" not in _hint(result)
        if "records none" not in _hint(result):
            assert str(bases.made_for) in _hint(result)
    COUNTS["bad-input cases"] += 1


def test_a_correct_adapter_still_verifies(bases):
    """The same adapter, untouched, on the base it names: every check ok (so the cases
    above fail for what they plant, not for the adapter)."""
    doc = invoke_json("verify", bases.adapter, "-b", bases.made_for)
    assert doc["structural"]["ok"] and doc["structural"]["modules"] == 14
    assert doc["structural"]["extra_wrapped"] == 0
    assert doc["probe"]["ok"] and doc["probe"]["changed"]
    assert doc["warnings"] == []
    named = invoke_json("verify", bases.adapter)  # the base from base_model_name_or_path
    assert named["base_model"] == str(bases.made_for) and named["structural"]["ok"]


def test_a_target_module_matching_nothing_is_a_warning(bases, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(bases.adapter, adapter)
    _edit_config(adapter, target_modules=[*ALL, "c_attn"])
    doc = invoke_json("verify", adapter, "-b", bases.made_for)
    assert doc["structural"]["ok"] and doc["probe"]["ok"]
    assert any("c_attn, which matches no module" in w for w in doc["warnings"])


def test_peft_missing_keys_warning_is_an_error_even_when_warnings_are_ignored(
    bases, tmp_path, monkeypatch
):
    """With our own structural check out of the way, PEFT's own missing-keys warning
    (loading a 2-layer adapter onto 4 layers) still ends in Error + Hint, never a pass."""
    from svdlora_cli.adapters import verify

    monkeypatch.setattr(verify, "structural_check", lambda *a, **k: {"ok": True, "modules": 14})
    monkeypatch.setattr(verify, "file_deltas", lambda adapter: {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = invoke("verify", bases.adapter, "-b", bases.deeper)
    assert_user_error(result, "PEFT finds missing adapter keys", "14 module(s)", "layers.2.")
    assert str(bases.made_for) in _hint(result)
    COUNTS["bad-input cases"] += 1


def test_the_library_reader_refuses_a_truncated_adapter(bases, tmp_path):
    from svdlora_cli.adapters.factors import read_peft_adapter
    from svdlora_cli.errors import CheckpointError

    adapter = tmp_path / "adapter"
    shutil.copytree(bases.adapter, adapter)
    assert len(read_peft_adapter(adapter)) == 14
    _cut_short(adapter)
    with pytest.raises(CheckpointError, match="is truncated") as caught:
        read_peft_adapter(adapter)
    assert "truncated or corrupt" in caught.value.hint
