"""PEFT adapters from the SVD load cleanly and reproduce base + best rank-r delta."""

from __future__ import annotations

import json
import logging
import re
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from svdlora_cli.adapters.factors import load_factors, split_factors, target_module_names
from svdlora_cli.artifacts import write_svd_outputs
from svdlora_cli.spectra.svd_step import run_svd
from svdlora_cli.store.cache import ArtifactCache


def _svd_outputs(pair, tmp_path, split="b", **kwargs):
    result = run_svd(str(pair.base), str(pair.tuned), ArtifactCache(tmp_path / "cache"), **kwargs)
    doc = write_svd_outputs(
        result, tmp_path / "out", str(pair.base), str(pair.tuned), split, plot=False
    )
    return result, doc


def _merged_reference(pair, ranks: dict[str, int]):
    """Base weights plus numpy's best rank-r approximation of each target's dW."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(pair.base).eval()
    base = load_file(pair.base / "model.safetensors")
    tuned = load_file(pair.tuned / "model.safetensors")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for module, rank in ranks.items():
            name = f"{module}.weight"
            dw = tuned[name].double().numpy() - base[name].double().numpy()
            u, s, vh = np.linalg.svd(dw, full_matrices=False)
            approx = (u[:, :rank] * s[:rank]) @ vh[:rank]
            params[name].copy_(base[name] + torch.tensor(approx, dtype=torch.float32))
    return model


def _peft_logits(pair, adapter_dir, ids, caplog):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(pair.base).eval()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(model, adapter_dir).eval()
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    key_problems = [m for m in messages if re.search(r"(unexpected|missing)[\w ]*keys?", m, re.I)]
    assert not key_problems, key_problems
    with torch.no_grad():
        return peft_model(ids).logits, peft_model


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_adapter_logits_match_merged_rank_r_delta(arch, request, tmp_path, caplog):
    pair = request.getfixturevalue(f"{arch}_pair")
    result, doc = _svd_outputs(pair, tmp_path, rank=2)
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    logits, peft_model = _peft_logits(pair, doc["artifacts"]["adapter"], ids, caplog)
    ranks = {m.name: m.rank for m in result.modules}
    with torch.no_grad():
        merged = _merged_reference(pair, ranks)(ids).logits
    assert (logits - merged).abs().max().item() < 1e-4
    config = peft_model.peft_config["default"]
    assert config.r == 2 and config.lora_alpha == 2
    assert config.fan_in_fan_out == (arch == "gpt2")
    # The adapter really changes the output: the base alone differs from the merged model.
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(pair.base).eval()(ids).logits
    assert (plain - merged).abs().max().item() > 1e-3


def test_adapter_files_follow_peft_layout(llama_pair, tmp_path):
    _, doc = _svd_outputs(llama_pair, tmp_path, rank=3)
    folder = tmp_path / "out" / "adapter_rank3"
    assert doc["artifacts"]["adapter"] == str(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == 3 and config["lora_alpha"] == 3 and config["peft_type"] == "LORA"
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    tensors = load_file(folder / "adapter_model.safetensors")
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    assert tensors[f"{key}.lora_A.weight"].shape == (3, 32)
    assert tensors[f"{key}.lora_B.weight"].shape == (32, 3)
    assert len(tensors) == 28


def test_sqrt_split_gives_the_same_product(llama_pair, tmp_path):
    result = run_svd(str(llama_pair.base), str(llama_pair.tuned), ArtifactCache(None), rank=3)
    for module, b in result.factors("b").items():
        s = result.factors("sqrt")[module]
        assert torch.allclose(b.B @ b.A, s.B @ s.A, atol=1e-6)
        assert torch.allclose(s.B.norm(dim=0), s.A.norm(dim=1), rtol=1e-4)  # balanced columns


def test_factors_file_round_trips(llama_pair, tmp_path):
    result, doc = _svd_outputs(llama_pair, tmp_path, rank=2)
    loaded = load_factors(doc["artifacts"]["factors"])
    assert set(loaded) == {m.name for m in result.modules}
    for module, f in result.factors("b").items():
        assert torch.equal(loaded[module].B, f.B) and torch.equal(loaded[module].A, f.A)


def test_energy_mode_writes_a_rank_pattern_peft_honours(llama_pair, tmp_path, caplog):
    # Rank-2 energies differ a little by shape (the noise share); a threshold between
    # them must give rank 2 to some modules and rank 3 to others.
    at_two = [
        m.energy
        for m in run_svd(
            str(llama_pair.base), str(llama_pair.tuned), ArtifactCache(None), rank=2
        ).modules
    ]
    threshold = (min(at_two) + max(at_two)) / 2
    result, doc = _svd_outputs(llama_pair, tmp_path, energy=threshold, max_rank=8)
    ranks = {m.name: m.rank for m in result.modules}
    assert set(ranks.values()) == {2, 3}, ranks
    for m, e2 in zip(result.modules, at_two, strict=True):
        assert m.energy >= threshold and (m.rank == 2) == (e2 >= threshold)
    config = json.loads(
        (tmp_path / "out" / doc["artifacts"]["adapter"] / "adapter_config.json").read_text()
    )
    assert config["rank_pattern"] and config["rank_pattern"] == config["alpha_pattern"]
    ids = torch.randint(0, 96, (1, 8), generator=torch.Generator().manual_seed(1))
    logits, peft_model = _peft_logits(llama_pair, doc["artifacts"]["adapter"], ids, caplog)
    from peft.tuners.lora import LoraLayer

    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer):
            short = name.removeprefix("base_model.model.")
            assert module.r["default"] == ranks[short]
            assert module.scaling["default"] == pytest.approx(1.0)
    with torch.no_grad():
        merged = _merged_reference(llama_pair, ranks)(ids).logits
    assert (logits - merged).abs().max().item() < 1e-4


def test_split_rejects_unknown_names():
    from svdlora_cli.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError):
        split_factors(torch.ones(2, 1), torch.ones(1), torch.ones(1, 2), "c")


def test_target_module_names_use_full_names_for_partial_selection():
    candidates = ["m.layers.0.q_proj", "m.layers.1.q_proj", "m.layers.0.v_proj"]
    assert target_module_names(candidates[:2], candidates) == ["q_proj"]
    assert target_module_names(candidates[:1], candidates) == ["m.layers.0.q_proj"]


def test_layout_reader_checks_per_module_ranks_against_rank_pattern(tmp_path):
    """Mixed ranks go to rank_pattern; the checked reader finds each module's rank there,
    and a rank_pattern that disagrees with one module's tensors is refused by name."""
    from svdlora_cli.adapters.checks import AdapterCheckError, config_check
    from svdlora_cli.adapters.factors import LowRankFactors, read_adapter_layout, write_peft_adapter

    gen = torch.Generator().manual_seed(0)
    modules = {"m.layers.0.q_proj": 2, "m.layers.1.q_proj": 2, "m.layers.0.v_proj": 3}
    factors = {
        m: LowRankFactors(
            B=torch.randn(8, r, generator=gen), A=torch.randn(r, 6, generator=gen), S=torch.ones(r)
        )
        for m, r in modules.items()
    }
    folder = write_peft_adapter(tmp_path / "a", factors, list(modules), "some/base")
    layout = read_adapter_layout(folder)
    assert {m: layout.rank(m) for m in layout.shapes} == modules
    assert layout.base_model == "some/base" and layout.scale("m.layers.0.v_proj") == 1.0
    config_check(layout)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["rank_pattern"] = {k: 4 for k in config["rank_pattern"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterCheckError, match=r"m\.layers\.0\.v_proj \(config 4, tensors 3\)"):
        config_check(read_adapter_layout(folder))


def test_torch_and_numpy_factors_split_and_write_the_same_bits(tmp_path):
    """The full path (torch) and the warm path (numpy) share the split and the writers: the
    same U, S, Vh give bit-equal factors and byte-equal files, for both splits (here, on
    x86 with AVX2, torch's own sqrt is an ulp off numpy's for some of these values)."""
    from svdlora_cli.adapters.factors import LowRankFactors, save_factors, write_peft_adapter

    gen = torch.Generator().manual_seed(0)
    U, S, Vh = torch.linalg.svd(torch.randn(48, 40, generator=gen), full_matrices=False)
    S = S * torch.linspace(1e-3, 3.0, S.shape[0])
    r = 6
    for split in ("b", "sqrt"):
        t = split_factors(U[:, :r], S[:r], Vh[:r], split)
        n = split_factors(U.numpy()[:, :r], S.numpy()[:r], Vh.numpy()[:r], split)
        assert isinstance(t.B, torch.Tensor) and isinstance(n.B, np.ndarray)
        for name in ("B", "A", "S"):
            assert np.array_equal(getattr(t, name).numpy(), getattr(n, name)), (split, name)
        written = []
        for kind, f in (("torch", t), ("numpy", n)):
            factors: dict[str, LowRankFactors] = {"m.layers.0.q_proj": f}
            save_factors(tmp_path / f"{kind}.safetensors", factors, {"truncation": "rank6"})
            folder = write_peft_adapter(tmp_path / kind, factors, list(factors), "base")
            written.append(
                [
                    (tmp_path / f"{kind}.safetensors").read_bytes(),
                    (folder / "adapter_model.safetensors").read_bytes(),
                    (folder / "adapter_config.json").read_bytes(),
                ]
            )
        assert written[0] == written[1], split
    # sqrt split: B @ A is the rank-r truncation, in the right orientation
    f = split_factors(U[:, :r], S[:r], Vh[:r], "sqrt")
    assert torch.allclose(f.B @ f.A, (U[:, :r] * S[:r]) @ Vh[:r], atol=1e-5)
