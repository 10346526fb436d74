"""Several LoRA adapters of one base decoded in one batch give each model its own outputs."""

from __future__ import annotations

import itertools

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
@pytest.mark.parametrize("sizes", [(3, 3, 3, 3, 3), (1, 2, 3, 0, 1)])
def test_each_row_gets_exactly_its_members_adapter(family, sizes):
    """The logits of every row equal PEFT's own forward of its member's adapter (the base's
    for base rows), with rsLoRA, rank and alpha patterns and GPT-2's Conv1D; also once
    rows have left the batch unevenly (sizes: rows per member, base members first)."""
    base, adapters = family
    model, names = _loaded(base, adapters)
    assert adapter_batch.stack_refusal(model, names) is None
    ranks = {r for m in model.modules() if hasattr(m, "r") for r in m.r.values()}
    assert ranks == {2, 3, 4, 6}  # the patterns took effect
    members = [None, None, *names]
    ids = torch.randint(4, 90, (3, 7), generator=torch.Generator().manual_seed(0))
    rows = torch.cat([ids[:n] for n in sizes])
    blocks = [b for b, n in enumerate(sizes) for _ in range(n)]
    with adapter_batch.adapter_rows(model, members) as assign:
        assign(blocks)
        stacked = model(input_ids=rows).logits.split(list(sizes))
    expected = []
    for member, n in zip(members, sizes, strict=True):
        if n == 0:  # a member whose rows have all left
            expected.append(stacked[len(expected)])  # empty: nothing to compare
        elif member is None:
            with model.disable_adapter():
                expected.append(model(input_ids=ids[:n]).logits)
        else:
            model.set_adapter(member)
            expected.append(model(input_ids=ids[:n]).logits)
    for got, want in zip(stacked, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The adapters differ from the base and from each other: a swapped row would fail.
    firsts = [logits[0] for logits in expected[1:] if len(logits)]
    assert all((a - b).abs().max() > 1e-2 for a, b in itertools.pairwise(firsts))
    # The hooks are gone once the context is closed: PEFT's own forward again.
    model.set_adapter(names[0])
    with model.disable_adapter():
        plain = model(input_ids=ids).logits
    assert (model(input_ids=ids).logits - plain).abs().max() > 1e-2


def test_rows_of_one_member_must_be_contiguous(family):
    base, adapters = family
    model, names = _loaded(base, adapters)
    with (
        adapter_batch.adapter_rows(model, [None, *names]) as assign,
        pytest.raises(ValueError, match="contiguous"),
    ):
        assign([0, 1, 0])


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_greedy_tokens_are_generates_greedy_search(tmp_path, arch):
    """The own decoder (finished rows leave the batch) gives `generate`'s tokens, with left
    padding and rows that end at different steps."""
    from transformers import AutoModelForCausalLM

    from svdlora_cli.models.loading import load_tokenizer

    folder = build_tiny_llm(tmp_path / arch, arch)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = load_tokenizer(str(folder))
    tokenizer.padding_side = "left"
    prompts = ["What is 2 plus 3?", "Hi", "Count to four, slowly:", "x"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    free = generation.greedy_tokens(model, ids, mask, 12, None, lambda rows: None)
    # Stop at the token that ends the most rows at different steps.
    steps: dict[int, set[int]] = {}
    for row in free:
        for step, token in enumerate(row):
            steps.setdefault(token, set()).add(step)
    eos = max(steps, key=lambda token: len(steps[token]))
    heard: list[list[int]] = []
    ours = generation.greedy_tokens(model, ids, mask, 12, eos, lambda r: heard.append(list(r)))
    with torch.no_grad():
        theirs = model.generate(
            **batch, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=0
        )[:, ids.shape[1] :].tolist()
    assert ours == [row[: row.index(eos) + 1] if eos in row else row for row in theirs]
    assert len({len(row) for row in ours}) > 1 and len(heard) > 1  # rows did leave early
    assert heard[0] == [0, 1, 2, 3]
    assert all(set(later) < set(earlier) for earlier, later in itertools.pairwise(heard))


def test_a_generation_config_that_changes_greedy_choices_decodes_through_generate(tmp_path):
    """A repetition penalty (or a forward without an input the own loop passes) is
    `generate`'s business: its tokens, every row to the end, cut after the EOS."""
    from transformers import AutoModelForCausalLM

    from svdlora_cli.models.loading import load_tokenizer

    folder = build_tiny_llm(tmp_path / "llama")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = load_tokenizer(str(folder))
    tokenizer.padding_side = "left"
    batch = tokenizer(["What is 2 plus 3?", "Hi"], return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    plain = generation.greedy_tokens(model, ids, mask, 10, None, lambda rows: None)
    model.generation_config.repetition_penalty = 3.0
    heard: list[list[int]] = []
    ours = generation.greedy_tokens(model, ids, mask, 10, None, lambda r: heard.append(list(r)))
    with torch.no_grad():
        theirs = model.generate(**batch, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert ours == theirs[:, ids.shape[1] :].tolist() and ours != plain
    assert heard == [[0, 1]]


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
