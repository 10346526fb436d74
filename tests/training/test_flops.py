"""FLOP counts against hand counts from the config numbers, and MFU."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from svdlora_cli.training.device_peak import Peak
from svdlora_cli.training.flops import ModelFlops, utilisation

ROWS = [7, 3]  # two packed rows of different lengths
ANSWERS = 4  # logits taken at 4 answer positions


def _llama(tied: bool = False, head_dim: int | None = None):
    from transformers import AutoModelForCausalLM, LlamaConfig

    extra = {} if head_dim is None else {"head_dim": head_dim}
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=96,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        **extra,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def _qwen2():
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        vocab_size=100,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def _lora(model, targets, r: int = 4):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, lora_alpha=8, target_modules=targets))


def _hand_count(
    *,
    hidden: int,
    inter: int,
    heads: int,
    kv_heads: int,
    vocab: int,
    layers: int,
    rows: list[int],
    logits: int,
    head_dim: int | None = None,
    base: int = 6,
    lm_head: int = 6,
    lora: dict[str, int] | None = None,
) -> int:
    """Training FLOPs written out by hand: `base` / `lm_head` are 6 (trainable) or 4 (frozen);
    `lora` maps each adapted projection to its rank."""
    hd = head_dim or hidden // heads
    q, kv = heads * hd, kv_heads * hd
    shapes = {  # name: (in, out)
        "q_proj": (hidden, q),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (q, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }
    per_token = base * sum(i * o for i, o in shapes.values())
    for name, r in (lora or {}).items():
        i, o = shapes[name]
        per_token += 6 * (i * r + r * o)
    tokens = sum(rows)
    pairs = sum(n * (n + 1) // 2 for n in rows)
    attention = 3 * layers * (2 * 2 * q * pairs)
    return layers * per_token * tokens + attention + logits * lm_head * vocab * hidden


LLAMA = {"hidden": 32, "inter": 64, "heads": 4, "kv_heads": 2, "vocab": 96, "layers": 2}
QWEN2 = {"hidden": 48, "inter": 80, "heads": 6, "kv_heads": 2, "vocab": 100, "layers": 3}
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def test_full_model_is_6n_plus_attention_and_head():
    count = ModelFlops.from_model(_llama()).micro_batch(ROWS, ANSWERS)
    assert count == _hand_count(**LLAMA, rows=ROWS, logits=ANSWERS)
    # Qwen2 with GQA: k/v are narrower, but attention runs over all 6 query heads.
    qwen = ModelFlops.from_model(_qwen2())
    assert qwen.attention_width == 48
    assert qwen.micro_batch(ROWS, ANSWERS) == _hand_count(**QWEN2, rows=ROWS, logits=ANSWERS)


def test_matches_torchs_flop_counter_on_a_full_training_step():
    """torch's FlopCounterMode sees the same matmuls; its attention is the full L x L square."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _llama()
    model.config._attn_implementation = "eager"
    ids = torch.randint(0, 96, (1, 10), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids).logits.sum().backward()
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    counted = ModelFlops.from_model(model)
    weights_only = dataclasses.replace(counted, layers=0)
    assert counts["aten.mm"] == weights_only.micro_batch([10], logit_positions=10)
    square = 3 * 2 * (2 * 2 * 32) * 10 * 10
    # transformers 5.17 (the GPU image's) also runs the rotary angles as a bmm: the
    # inverse frequencies (head_dim / 2 = 4) times the 10 positions, 2 flops each.
    rotary = 2 * 4 * 10
    assert counts["aten.bmm"] in (square, square + rotary)
    causal = counted.micro_batch([10], 10) - weights_only.micro_batch([10], 10)
    assert causal == square * 55 / 100  # 55 of the 100 query-key pairs are causal


def test_head_dim_from_the_config_sets_the_attention_width():
    model = ModelFlops.from_model(_llama(head_dim=16))
    assert model.attention_width == 64
    assert model.micro_batch(ROWS, ANSWERS) == _hand_count(
        **LLAMA, head_dim=16, rows=ROWS, logits=ANSWERS
    )


@pytest.mark.parametrize(
    ("factory", "shape", "targets"),
    [
        (_llama, LLAMA, ["q_proj", "v_proj"]),
        (_qwen2, QWEN2, ["q_proj", "v_proj"]),
        (_llama, LLAMA, "all-linear"),
        (_qwen2, QWEN2, "all-linear"),
    ],
)
def test_lora_counts_frozen_base_and_trainable_factors(factory, shape, targets):
    student = _lora(factory(), targets)
    adapted = ALL if targets == "all-linear" else targets
    expected = _hand_count(
        **shape, rows=ROWS, logits=ANSWERS, base=4, lm_head=4, lora=dict.fromkeys(adapted, 4)
    )
    assert ModelFlops.from_model(student).micro_batch(ROWS, ANSWERS) == expected


def test_the_hand_count_catches_a_count_without_rank_or_with_the_head_everywhere():
    counted = ModelFlops.from_model(_lora(_llama(), ["q_proj", "v_proj"]))
    right = dict(rows=ROWS, logits=ANSWERS, base=4, lm_head=4)
    expected = _hand_count(**LLAMA, **right, lora={"q_proj": 4, "v_proj": 4})
    assert counted.micro_batch(ROWS, ANSWERS) == expected
    # A count that drops the LoRA factors, or takes them at another rank, differs from it ...
    no_lora = dataclasses.replace(
        counted, weights=tuple(w for w in counted.weights if not w.trainable)
    )
    assert no_lora.micro_batch(ROWS, ANSWERS) != expected
    assert _hand_count(**LLAMA, **right, lora={"q_proj": 8, "v_proj": 8}) != expected
    # ... and so does one that runs the LM head at every token instead of the answers.
    assert counted.micro_batch(ROWS, sum(ROWS)) != expected
    assert counted.micro_batch(ROWS, sum(ROWS)) - expected == (sum(ROWS) - ANSWERS) * 4 * 96 * 32


def test_a_head_trained_with_modules_to_save_counts_once_and_trainable():
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])
    counted = ModelFlops.from_model(get_peft_model(_llama(), config))
    assert counted.micro_batch(ROWS, ANSWERS) == _hand_count(
        **LLAMA, rows=ROWS, logits=ANSWERS, base=4, lm_head=6, lora={"q_proj": 4, "v_proj": 4}
    )


def test_tied_head_follows_the_embedding():
    tied, untied = _llama(tied=True), _llama(tied=False)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    for model in (tied, untied):
        model.model.embed_tokens.weight.requires_grad_(False)
    # Freezing the embedding freezes a tied head (4 V d), not an untied one (6 V d).
    assert ModelFlops.from_model(tied).micro_batch(ROWS, ANSWERS) == _hand_count(
        **LLAMA, rows=ROWS, logits=ANSWERS, lm_head=4
    )
    assert ModelFlops.from_model(untied).micro_batch(ROWS, ANSWERS) == _hand_count(
        **LLAMA, rows=ROWS, logits=ANSWERS, lm_head=6
    )


def test_causal_attention_is_exact_per_row():
    model = ModelFlops.from_model(_llama())
    no_attention = dataclasses.replace(model, layers=0)
    attention = model.micro_batch([5, 2], 0) - no_attention.micro_batch([5, 2], 0)
    # rows of 5 and 2 tokens: 15 + 3 query-key pairs; 2 layers; QK^T and AV; x3 for training
    assert attention == 3 * 2 * (2 * 2 * 32) * (15 + 3)
    # One row of 7 has more pairs than rows of 5 and 2 with the same tokens.
    assert model.micro_batch([7], 0) - model.micro_batch([5, 2], 0) == 3 * 2 * 4 * 32 * (28 - 18)


def test_forward_only_is_a_third_of_a_full_training_step():
    model = ModelFlops.from_model(_llama())
    assert model.forward(ROWS, ANSWERS) * 3 == model.micro_batch(ROWS, ANSWERS)
    frozen = ModelFlops.from_model(_lora(_llama(), "all-linear"))
    assert (
        frozen.forward(ROWS, ANSWERS)
        == _hand_count(**LLAMA, rows=ROWS, logits=ANSWERS, lora=dict.fromkeys(ALL, 4)) / 3
    )


def test_gpt2_conv1d_counts_with_its_transposed_shape():
    from transformers import AutoModelForCausalLM, GPT2Config

    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=96, tie_word_embeddings=False)
    model = ModelFlops.from_model(AutoModelForCausalLM.from_config(config))
    per_layer = 32 * 96 + 32 * 32 + 32 * 128 + 128 * 32  # c_attn, attn c_proj, c_fc, mlp c_proj
    pairs = 28 + 6
    assert model.micro_batch(ROWS, ANSWERS) == (
        6 * 2 * per_layer * 10 + 3 * 2 * 4 * 32 * pairs + ANSWERS * 6 * 96 * 32
    )


def test_wrappers_are_unwrapped():
    class Wrapper(nn.Module):  # what DDP and accelerate put around the model
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

    student = _lora(_llama(), ["q_proj", "v_proj"])
    assert ModelFlops.from_model(Wrapper(student)) == ModelFlops.from_model(student)


def test_utilisation():
    peak = Peak(100.0, "test")
    doc = utilisation(3e13, 2.0, peak)
    assert doc == {"tflops": 15.0, "mfu": 0.15, "peak_tflops": 100.0, "peak_source": "test"}
    assert utilisation(3e13, 0.0, peak)["tflops"] == 0 and utilisation(1, -1, peak)["mfu"] == 0


def test_run_utilisation_counts_every_process_and_warns_above_the_peak(monkeypatch, caplog):
    import logging

    from svdlora_cli.training import flops as flops_module

    monkeypatch.setattr(flops_module, "device_peak", lambda device, dtype: Peak(10.0, "test"))
    monkeypatch.setattr(flops_module, "checked_peak", lambda device, dtype, peak, done: peak)
    doc = flops_module.run_utilisation(8e13, 2.0, torch.device("cpu"), torch.float32, 2)
    assert doc == {"tflops": 40.0, "mfu": 2.0, "peak_tflops": 20.0, "peak_source": "test"}
    assert "MFU above 100%" in caplog.text  # 20 TFLOP/s per device against a peak of 10
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="svdlora"):
        doc = flops_module.run_utilisation(8e13, 2.0, torch.device("cpu"), torch.float32, 4)
    assert doc["mfu"] == 1.0 and "MFU above" not in caplog.text


def _tiny_rows(n: int = 6, seed: int = 0):
    """Rows of different lengths, each a prompt (labels ignored) then an answer."""
    from svdlora_cli.data import IGNORE_INDEX, TokenizedSet

    g = torch.Generator().manual_seed(seed)
    ids, labels = [], []
    for i in range(n):
        length, prompt = 5 + (3 * i) % 7, 2 + i % 3
        row = torch.randint(1, 96, (length,), generator=g).tolist()
        ids.append(row)
        labels.append([IGNORE_INDEX] * prompt + row[prompt:])
    return TokenizedSet(ids, labels, truncated=0, dropped=0)


def _padded_hand_count(data, indices, **counts) -> int:
    """A padded micro-batch by hand: each row's real length; the head at every row of each
    position where some row predicts an answer token."""
    from svdlora_cli.data import IGNORE_INDEX

    positions = {
        j for i in indices for j, label in enumerate(data.labels[i][1:]) if label != IGNORE_INDEX
    }
    rows = [len(data.input_ids[i]) for i in indices]
    return _hand_count(**LLAMA, rows=rows, logits=len(positions) * len(indices), **counts)


def test_every_step_log_row_carries_the_runs_cumulative_training_flops(tmp_path):
    """A real `fit` of a tiny LoRA: row k's flops are the hand count of steps 1..k."""
    from svdlora_cli.training.accelerator import make_accelerator
    from svdlora_cli.training.config import TrainConfig
    from svdlora_cli.training.loop import fit
    from svdlora_cli.training.schedule import training_schedule
    from svdlora_cli.training.steplog import read_step_log, write_step_log

    data = _tiny_rows()
    config = TrainConfig(
        epochs=2, batch_size=2, grad_accum=2, max_length=32, device="cpu", packing=False
    )
    model = _lora(_llama(), ["q_proj", "v_proj"])
    result = fit(model, data, None, config, 0, make_accelerator("cpu", "no"))
    lora = {"q_proj": 4, "v_proj": 4}
    expected, total = [0], 0
    for step in training_schedule(data, config, config.epochs, config.max_steps):
        total += sum(
            _padded_hand_count(data, mb, base=4, lm_head=4, lora=lora) for mb in step.micro_batches
        )
        expected.append(total)
    assert len(expected) == 5  # micro-batches of 2 rows, 2 per step: 2 steps per epoch, row 0
    assert [r.flops for r in result.rows] == expected
    assert result.extras["training_flops"] == expected[-1]
    # The hand count is not a tautology: the same rows at full length, or with the head at
    # every token, count differently.
    assert expected[-1] != sum(
        _hand_count(**LLAMA, rows=[len(data.input_ids[i]) for i in s.indices], logits=0, base=4)
        for s in training_schedule(data, config, config.epochs, None)
    )
    # The CSV keeps every digit of the count, and a log from before the column reads None.
    path = write_step_log(tmp_path / "training_log_x.csv", result.rows)
    assert [r.flops for r in read_step_log(path)] == expected
    count = 2**57 + 2**12  # a float exactly; 6 significant digits would round it
    big = write_step_log(tmp_path / "big.csv", [dataclasses.replace(result.rows[-1], flops=count)])
    assert str(count) in big.read_text() and read_step_log(big)[0].flops == count
    old = tmp_path / "training_log_old.csv"
    old.write_text("step,epoch,loss,lr,grad_norm,eval_loss,tokens,elapsed_s\n0,0,2.5,,,2.4,0,0\n")
    assert read_step_log(old)[0].flops is None


def test_a_peft_model_without_its_adapters_counts_as_its_base():
    student = _lora(_llama(), ["q_proj", "v_proj"])
    base = ModelFlops.from_model(student, adapters=False)
    assert base.micro_batch(ROWS, ANSWERS) == _hand_count(
        **LLAMA, rows=ROWS, logits=ANSWERS, base=4, lm_head=4
    )
    assert ModelFlops.from_model(student).micro_batch(ROWS, ANSWERS) != base.micro_batch(
        ROWS, ANSWERS
    )
