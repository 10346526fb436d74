"""FLOP counts against hand counts from the config numbers, and the device peak's cache."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from svdlora_cli.errors import InvalidOptionError
from svdlora_cli.training import flops
from svdlora_cli.training.flops import ModelFlops, Peak, device_peak, utilisation

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
    assert counts["aten.bmm"] == square
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


# The device peak.


@pytest.fixture
def probes(monkeypatch, tmp_path):
    """Count the probe's runs; an empty memo and a cache file in tmp_path."""
    calls = []

    def probe(device, dtype):
        calls.append((device, dtype))
        return 1.25, 512

    monkeypatch.setattr(flops, "_probe", probe)
    monkeypatch.setattr(flops, "_MEMO", {})
    monkeypatch.setenv("SVDLORA_PEAK_CACHE", str(tmp_path / "peaks" / "device_peaks.json"))
    return calls


def test_cpu_peak_is_measured_once_then_cached(probes, tmp_path):
    peak = device_peak("cpu", torch.float32)
    assert peak.tflops == 1.25 and peak.source.startswith("measured: 512x512 matmul probe, ")
    assert device_peak(torch.device("cpu"), torch.float32) == peak and len(probes) == 1
    flops._MEMO.clear()  # a new process: the file answers
    assert device_peak("cpu", torch.float32) == peak and len(probes) == 1
    stored = json.loads((tmp_path / "peaks" / "device_peaks.json").read_text())
    assert [v["tflops"] for v in stored.values()] == [1.25]
    device_peak("cpu", torch.bfloat16)  # another dtype is another entry
    assert len(probes) == 2


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"x": "y"}', ""])
def test_a_corrupt_cache_file_is_ignored_and_rewritten(probes, tmp_path, content):
    path = tmp_path / "peaks" / "device_peaks.json"
    path.parent.mkdir()
    path.write_text(content)
    assert device_peak("cpu", torch.float32).tflops == 1.25 and len(probes) == 1
    assert list(json.loads(path.read_text()).values())[-1]["tflops"] == 1.25


def test_an_unwritable_cache_is_not_an_error(probes, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("SVDLORA_PEAK_CACHE", str(tmp_path / "file" / "peaks.json"))
    assert device_peak("cpu", torch.float32).tflops == 1.25


def test_env_override(probes, monkeypatch):
    monkeypatch.setenv("SVDLORA_PEAK_TFLOPS", "123.5")
    assert device_peak("cpu", torch.float32) == Peak(123.5, "SVDLORA_PEAK_TFLOPS")
    assert probes == []
    monkeypatch.setenv("SVDLORA_PEAK_TFLOPS", "fast")
    with pytest.raises(InvalidOptionError, match="SVDLORA_PEAK_TFLOPS"):
        device_peak("cpu", torch.float32)


@pytest.mark.parametrize(
    ("name", "dtype", "tf32", "tflops", "source"),
    [
        ("NVIDIA H200", torch.bfloat16, False, 989.5, "NVIDIA H200 SXM datasheet, dense BF16"),
        ("NVIDIA H200 NVL", torch.bfloat16, False, 835.5, "NVIDIA H200 NVL datasheet, dense BF16"),
        ("NVIDIA H100 80GB HBM3", torch.float16, False, 989.5, "NVIDIA H100 SXM datasheet"),
        ("NVIDIA H100 PCIe", torch.bfloat16, False, 756.5, "NVIDIA H100 PCIe datasheet"),
        ("NVIDIA H100 NVL", torch.bfloat16, False, 835.5, "NVIDIA H100 NVL datasheet"),
        ("NVIDIA A100-SXM4-80GB", torch.bfloat16, False, 312.0, "NVIDIA A100 datasheet"),
        ("NVIDIA A100-SXM4-80GB", torch.float32, False, 19.5, "FP32"),
        ("NVIDIA A100-SXM4-80GB", torch.float32, True, 156.0, "dense TF32"),
        ("NVIDIA L40S", torch.bfloat16, False, 362.05, "NVIDIA L40S datasheet"),
        ("NVIDIA L4", torch.bfloat16, False, 121.0, "NVIDIA L4 datasheet"),
        ("NVIDIA A10", torch.bfloat16, False, 125.0, "NVIDIA A10 datasheet"),
        ("NVIDIA GeForce RTX 4090", torch.bfloat16, False, 165.2, "RTX 4090"),
        ("Tesla V100-SXM2-16GB", torch.float16, False, 125.0, "NVIDIA V100 SXM2 datasheet"),
        ("Tesla V100-PCIE-32GB", torch.float16, False, 112.0, "NVIDIA V100 PCIe datasheet"),
        ("Tesla T4", torch.float16, False, 65.0, "NVIDIA T4 datasheet"),
    ],
)
def test_listed_gpus_take_the_datasheet_figure(
    probes, monkeypatch, name, dtype, tf32, tflops, source
):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(flops, "_tf32_enabled", lambda: tf32)
    peak = device_peak("cuda:0", dtype)
    assert peak.tflops == tflops and source in peak.source and probes == []


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("NVIDIA A10G", torch.bfloat16),  # not an A10
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", torch.bfloat16),  # a slice of the chip
        ("Tesla T4", torch.bfloat16),  # no bf16 tensor cores
        ("Some Future GPU", torch.bfloat16),
    ],
)
def test_other_gpus_are_measured(probes, monkeypatch, name, dtype):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert device_peak("cuda:0", dtype).source.startswith("measured:") and len(probes) == 1


def test_tf32_follows_torchs_switches():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert not flops._tf32_enabled()
        torch.set_float32_matmul_precision("high")
        assert flops._tf32_enabled()
    finally:
        torch.set_float32_matmul_precision(before)


def test_probe_on_request_even_for_a_listed_gpu(probes, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setenv("SVDLORA_PEAK_TFLOPS", "probe")
    assert device_peak("cuda:0", torch.bfloat16).source.startswith("measured:")
    assert len(probes) == 1


def test_probe_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    tflops, n = flops._probe(torch.device("cpu"), torch.float32)
    assert tflops > 0 and n == 1024
    assert torch.equal(torch.get_rng_state(), state)


def test_utilisation():
    peak = Peak(100.0, "test")
    doc = utilisation(3e13, 2.0, peak)
    assert doc == {"tflops": 15.0, "mfu": 0.15, "peak_tflops": 100.0, "peak_source": "test"}
    assert utilisation(3e13, 0.0, peak)["tflops"] == 0 and utilisation(1, -1, peak)["mfu"] == 0


def test_a_peak_measured_under_load_is_measured_again_when_a_run_beats_it(
    probes, tmp_path, monkeypatch
):
    """A probe that ran while the machine was busy set too low a peak; a run faster than
    it must not report MFU above 100% from it: the probe runs again, the higher stays."""
    low = device_peak("cpu", torch.float32)
    assert low.tflops == 1.25
    assert flops.checked_peak("cpu", torch.float32, low, 1.0) is low  # no reason to doubt
    assert len(probes) == 1
    monkeypatch.setattr(flops, "_probe", lambda device, dtype: (probes.append(1) or 4.0, 1024))
    fresh = flops.checked_peak("cpu", torch.float32, low, 2.0)
    assert fresh.tflops == 4.0 and len(probes) == 2
    flops._MEMO.clear()  # and the next process reads the new figure
    assert device_peak("cpu", torch.float32) == fresh
    listed = Peak(989.5, "NVIDIA H200 SXM datasheet, dense BF16")
    assert flops.checked_peak("cpu", torch.float32, listed, 2000.0) is listed
