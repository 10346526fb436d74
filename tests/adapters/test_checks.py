"""The per-module delta check: r x r Gram products against dense differences, every module
checked, and one dense witness per layer class pinning PEFT's own formula."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from svdlora_cli.adapters.checks import AdapterCheckError, structural_check
from svdlora_cli.adapters.factors import read_adapter_layout
from svdlora_cli.adapters.low_rank import file_deltas, low_rank_gap


@pytest.mark.parametrize("ranks", [(3, 3), (3, 5), (1, 4)])
def test_low_rank_gap_is_the_dense_frobenius_difference(ranks):
    gen = torch.Generator().manual_seed(sum(ranks))
    left = torch.randn(11, ranks[0], generator=gen)
    right = torch.randn(ranks[0], 7, generator=gen)
    other_left = torch.randn(11, ranks[1], generator=gen)
    other_right = torch.randn(ranks[1], 7, generator=gen)
    gap, mine, theirs = low_rank_gap(left, right, other_left, other_right)
    one, two = left.double() @ right.double(), other_left.double() @ other_right.double()
    assert gap == pytest.approx(float(torch.linalg.norm(one - two)), rel=1e-10)
    assert mine == pytest.approx(float(torch.linalg.norm(one)), rel=1e-12)
    assert theirs == pytest.approx(float(torch.linalg.norm(two)), rel=1e-12)


def test_low_rank_gap_resolves_a_small_relative_difference():
    """The expansion cancels large terms: a 1e-6 relative change must still show."""
    gen = torch.Generator().manual_seed(0)
    left, right = torch.randn(300, 8, generator=gen), torch.randn(8, 200, generator=gen)
    gap, norm, _ = low_rank_gap(left, right, left, right)
    assert gap <= 1e-7 * norm
    bent = left.double().clone()
    bent[:, 0] *= 1 + 1e-6
    gap, norm, _ = low_rank_gap(left.double(), right.double(), bent, right.double())
    dense = float(torch.linalg.norm(left.double() @ right.double() - bent @ right.double()))
    assert gap == pytest.approx(dense, rel=1e-2) and gap > 0


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny Llama and a PEFT-made LoRA on four module types (non-zero B)."""
    from peft import LoraConfig

    from tests.conftest import build_tiny_llm, peft_made_adapter

    root = tmp_path_factory.mktemp("checks")
    base = build_tiny_llm(root / "base")
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj", "up_proj"])
    return base, peft_made_adapter(base, config, root / "adapter")


def _bent_copy(adapter: Path, where: Path, key_part: str, factor: float) -> Path:
    """The adapter with one module's lora_B scaled by `factor`."""
    shutil.copytree(adapter, where)
    path = where / "adapter_model.safetensors"
    state = load_file(path)
    (key,) = [k for k in state if key_part in k and "lora_B" in k]
    state[key] = state[key] * factor
    save_file(state, path, metadata={"format": "pt"})
    return where


def test_every_module_is_checked_and_only_the_witnesses_densely(adapter, monkeypatch):
    from peft.tuners.lora import Linear

    base, folder = adapter
    dense_calls: list[int] = []
    real = Linear.get_delta_weight

    def counted(self, name):
        dense_calls.append(self.out_features * self.in_features)
        return real(self, name)

    monkeypatch.setattr(Linear, "get_delta_weight", counted)
    deltas = structural_check(folder, base, file_deltas(folder))["deltas"]
    assert deltas["checked"] == 4 * 2  # four module types in each of the tiny model's 2 layers
    assert deltas["max_rel_diff"] < 1e-6 and deltas["norm"] == "frobenius"
    # one LoRA layer class (Linear): one dense delta, of the smallest module
    sizes = [b[0] * a[1] for a, b in read_adapter_layout(folder).shapes.values()]
    assert dense_calls == [min(sizes)] and min(sizes) < max(sizes)


def test_a_module_that_no_witness_covers_is_still_refused(adapter, tmp_path):
    """One up_proj (not the witness: k_proj/v_proj are smaller) off by 1%: refused by name."""
    base, folder = adapter
    expected = file_deltas(folder)
    bent = _bent_copy(folder, tmp_path / "bent", "layers.1.mlp.up_proj", 1.01)
    with pytest.raises(AdapterCheckError, match=r"differ: model\.layers\.1\.mlp\.up_proj"):
        structural_check(bent, base, expected)
    fine = _bent_copy(folder, tmp_path / "fine", "layers.1.mlp.up_proj", 1 + 1e-6)
    assert structural_check(fine, base, expected)["ok"]


def test_a_peft_whose_own_delta_formula_differs_is_caught_by_the_witness(adapter, monkeypatch):
    """The Gram check reads PEFT's scaling and factors; PEFT's get_delta_weight computing
    something else (here twice the product) is what the dense witness is for."""
    from peft.tuners.lora import Linear

    base, folder = adapter
    real = Linear.get_delta_weight
    monkeypatch.setattr(Linear, "get_delta_weight", lambda self, name: 2 * real(self, name))
    with pytest.raises(AdapterCheckError, match="is not its rank-r delta"):
        structural_check(folder, base, file_deltas(folder))
