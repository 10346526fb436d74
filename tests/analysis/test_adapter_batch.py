"""Several LoRA adapters of one base decoded in one batch give each model its own outputs."""

from __future__ import annotations

import pytest
import torch

from svdlora_cli.analysis import adapter_batch, generation
from tests.conftest import build_tiny_llm, peft_made_adapter


def _configs():
    from peft import LoraConfig

    return {
        "plain": LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
        "rslora": LoraConfig(r=2, lora_alpha=3, use_rslora=True, target_modules="all-linear"),
        "patterned": LoraConfig(
            r=3,
            lora_alpha=5,
            target_modules="all-linear",
            rank_pattern={r".*\.0\..*": 6},  # the first layer's modules
            alpha_pattern={r".*\.1\..*": 1},
        ),
    }


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def family(request, tmp_path_factory):
    """A tiny base (Llama, or GPT-2 with Conv1D layers) and three PEFT-made adapters of it."""
    root = tmp_path_factory.mktemp(f"stack-{request.param}")
    base = build_tiny_llm(root / "base", request.param)
    adapters = {
        name: str(peft_made_adapter(base, config, root / name))
        for name, config in _configs().items()
    }
    return str(base), adapters


def _loaded(base: str, adapters: dict[str, str]):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    names = list(adapters)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base), adapters[names[0]], adapter_name=names[0]
    )
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)
    return model.eval(), names


@torch.no_grad()
def test_each_block_gets_exactly_its_own_adapter(family):
    """The logits of every row block equal PEFT's own forward of that block's adapter (the
    base's for base blocks), with rsLoRA, rank and alpha patterns and GPT-2's Conv1D."""
    base, adapters = family
    model, names = _loaded(base, adapters)
    assert adapter_batch.stack_refusal(model, names) is None
    ranks = {r for m in model.modules() if hasattr(m, "r") for r in m.r.values()}
    assert ranks == {2, 3, 4, 6}  # the patterns took effect
    ids = torch.randint(4, 90, (3, 7), generator=torch.Generator().manual_seed(0))
    blocks = ids.repeat(2 + len(names), 1)  # two base blocks, then one per adapter
    with adapter_batch.adapter_blocks(model, names, base_blocks=2):
        stacked = model(input_ids=blocks).logits.split(len(ids))
    with model.disable_adapter():
        plain = model(input_ids=ids).logits
    expected = [plain, plain]
    for name in names:
        model.set_adapter(name)
        expected.append(model(input_ids=ids).logits)
    for got, want in zip(stacked, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The adapters differ from the base and each other, so a swapped block would fail.
    assert all((a - b).abs().max() > 1e-2 for a, b in zip(expected[1:], expected[2:]))
    # The hooks are gone once the block is closed: PEFT's own forward again.
    model.set_adapter(names[0])
    torch.testing.assert_close(model(input_ids=ids).logits, expected[2])


def test_a_batch_that_is_not_equal_blocks_is_refused(family):
    base, adapters = family
    model, names = _loaded(base, adapters)
    with adapter_batch.adapter_blocks(model, names, base_blocks=1):
        with pytest.raises(ValueError, match="equal blocks"):
            model(input_ids=torch.ones(5, 3, dtype=torch.long))


def test_stacked_completions_equal_each_model_decoded_alone(family):
    """Greedy answers of the base and each adapter, all in one batch, are the texts each
    model gives alone with its adapter merged (the path they replace); questions are
    split over two batches (batch_size 2) and passes over models (max_rows 4)."""
    base, adapters = family
    questions = ["What is 2 plus 3?", "Name a colour.", "Count to four:"]
    members = [None, *adapters.values()]
    stacked = adapter_batch.stacked_completions(
        base, members, questions, max_new_tokens=10, batch_size=2, max_rows=4
    )
    alone = []
    for adapter in members:
        model, tokenizer = generation.load_for_generation(base, adapter)
        (texts,) = generation.greedy_completions(model, tokenizer, questions, 10, batch_size=2)
        alone.append(texts)
    assert stacked == alone
    assert len({tuple(texts) for texts in alone}) > 1  # the models answer differently


def test_dora_adapters_are_not_stacked(tmp_path):
    from peft import LoraConfig

    base = build_tiny_llm(tmp_path / "base")
    plain = peft_made_adapter(base, LoraConfig(r=2, target_modules="all-linear"), tmp_path / "a")
    dora = LoraConfig(r=2, target_modules="all-linear", use_dora=True)
    dora_dir = peft_made_adapter(base, dora, tmp_path / "dora")
    model, names = _loaded(str(base), {"a": str(plain), "dora": str(dora_dir)})
    assert "DoraLinearVariant" in adapter_batch.stack_refusal(model, names)
    got = adapter_batch.stacked_completions(str(base), [None, str(plain), str(dora_dir)], ["x"], 4)
    assert got is None
