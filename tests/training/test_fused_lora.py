"""The fused LoRA forward gives PEFT's numbers: same loss, same gradients."""

from __future__ import annotations

import pytest
import torch

from svdlora_cli.data import collate, load_examples, tokenize_examples
from svdlora_cli.training import fused_lora
from svdlora_cli.training.loss import loss_sum
from tests.conftest import build_tiny_llm, write_rows


def _model(folder, dropout=0.0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=dropout)
    model = get_peft_model(model, lora)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_fused_forward_matches_peft_in_loss_and_gradients(arch, tmp_path):
    from transformers import AutoTokenizer

    folder = build_tiny_llm(tmp_path / arch, arch)
    tok = AutoTokenizer.from_pretrained(folder)
    data = tokenize_examples(load_examples(write_rows(tmp_path / "rows.json", 6)), tok, 64)
    batch = collate([0, 1, 2, 3], data, tok.pad_token_id)
    results = []
    for fused in (False, True):
        model = _model(folder)
        if fused:
            assert fused_lora.fuse(model) > 0
        loss, count = loss_sum(model, batch)
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        results.append((float(loss), count, grads))
    (loss0, count0, grads0), (loss1, count1, grads1) = results
    assert count0 == count1
    assert loss1 == pytest.approx(loss0, rel=1e-6)
    assert grads0.keys() == grads1.keys()
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], rtol=1e-5, atol=1e-7)


def test_anything_but_the_plain_case_runs_peft_forward(tmp_path):
    """Disabled adapters (the base's own output) must not get the update added."""
    from transformers import AutoTokenizer

    folder = build_tiny_llm(tmp_path / "llama", "llama")
    tok = AutoTokenizer.from_pretrained(folder)
    data = tokenize_examples(load_examples(write_rows(tmp_path / "rows.json", 4)), tok, 64)
    batch = collate([0, 1], data, tok.pad_token_id)
    model = _model(folder)
    with torch.no_grad(), model.disable_adapter():
        base = float(loss_sum(model, batch)[0])
    fused_lora.fuse(model)
    with torch.no_grad():
        with model.disable_adapter():
            assert float(loss_sum(model, batch)[0]) == base
        assert float(loss_sum(model, batch)[0]) != base
