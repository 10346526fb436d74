"""Eval losses of a bf16 run in fp32: a bf16 forward deletes a small LoRA change, the fp32
pass keeps it, equals an independent fp32 loss of the run's weights, and leaves training
on the same bits."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from svdlora_cli.data import collate, load_examples, tokenize_examples
from svdlora_cli.training.accelerator import make_accelerator
from svdlora_cli.training.config import TrainConfig
from svdlora_cli.training.eval_precision import eval_precision, full_precision
from svdlora_cli.training.student import base_plan, train_student

IDS = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])


TARGETS = {"llama": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}
ARCHS = {  # name: (architecture, tied input and output embeddings)
    "llama": ("llama", False),
    "llama-tied": ("llama", True),
    "qwen2-gqa": ("qwen2", False),
    "gpt2-conv1d": ("gpt2", False),
}


def _small_lora(model_dir, arch: str, tied: bool) -> torch.nn.Module:
    """A tiny model in bf16 with a LoRA whose change is below half a bf16 step of every
    output it touches (B about 1e-6: at 1e-5 to 1e-4 a bf16 forward turns the change into
    rounding noise larger than the change itself, measured)."""
    extra = {"tie_word_embeddings": True} if tied else {}
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, **extra)
    config = LoraConfig(
        r=4, lora_alpha=4, target_modules=TARGETS[arch], fan_in_fan_out=arch == "gpt2"
    )
    model = get_peft_model(base, config)
    gen = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data = (1e-6 * torch.randn(p.shape, generator=gen)).float()
        elif "lora_A" in name:
            p.data = p.data.float()
    return model


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


@pytest.mark.parametrize("case", list(ARCHS))
def test_a_bf16_forward_deletes_a_small_lora_change_that_full_precision_keeps(case, tmp_path):
    from tests.conftest import build_tiny_llm

    arch, tied = ARCHS[case]
    folder = build_tiny_llm(tmp_path / "base", arch)
    accelerator = make_accelerator("cpu", "bf16")
    model = accelerator.prepare(_small_lora(folder, arch, tied))
    bits = {n: p.detach().clone() for n, p in model.named_parameters()}
    wrapper = model.forward
    with model.disable_adapter():
        base = _logits(model)
    adapted = _logits(model)  # under accelerate's autocast
    assert torch.equal(adapted, base), "the bf16 forward kept the change (raise the test's B)"
    wide: list[int] = []  # fp32 parameters while the output layer runs: one layer's at a time
    last = model.get_output_embeddings()
    hook = last.register_forward_hook(
        lambda *_: wide.append(
            sum(p.numel() for p in model.parameters() if p.dtype == torch.float32)
        )
    )
    with full_precision(model, accelerator):
        full = _logits(model)
        with model.disable_adapter():
            full_base = _logits(model)
    hook.remove()
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert wide and max(wide) - lora <= last.weight.numel() + 2 * 32  # its weight (and a norm)
    assert (full - full_base).norm() > 1e-5  # the adapter's effect, visible in fp32
    # independently: the bf16 base's values in fp32 plus the same adapter, no autocast
    reference = _small_lora(folder, arch, tied).float()
    reference.load_state_dict(bits)
    assert torch.allclose(full, _logits(reference), atol=1e-6, rtol=0)
    # the pass leaves the weights' bits and accelerate's autocast wrapper as they were
    for name, p in model.named_parameters():
        assert p.dtype == bits[name].dtype and torch.equal(p, bits[name]), name
    assert model.forward == wrapper
    assert torch.equal(_logits(model), adapted)


def _fp32_eval_loss(model_dir, adapter_dir, eval_file, config) -> float:
    """The student's weights evaluated by hand: its bf16 base's values in fp32, its adapter,
    one padded batch of every eval row, no autocast."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = tokenize_examples(load_examples(eval_file), tok, config.max_length)
    batch = collate(list(range(len(rows))), rows, tok.pad_token_id)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).float()
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        return float(model(**batch).loss)


def _bf16_student(tiny_llm, tiny_data, out, eval_every: int) -> dict:
    config = TrainConfig(
        max_steps=3,
        learning_rate=3e-3,
        batch_size=4,
        max_length=64,
        device="cpu",
        precision="bf16",
        eval_every=eval_every,
    )
    plan = base_plan(str(tiny_llm), 4, None)
    return train_student(
        str(tiny_llm),
        "random",
        out,
        config,
        plan,
        data_path=str(tiny_data[0]),
        eval_path=str(tiny_data[1]),
    )


def test_a_bf16_students_eval_loss_is_the_fp32_loss_of_its_weights(tiny_llm, tiny_data, tmp_path):
    summary = _bf16_student(tiny_llm, tiny_data, tmp_path, eval_every=1)
    assert summary["eval_precision"] == "fp32"
    config = TrainConfig(max_length=64)
    expected = _fp32_eval_loss(tiny_llm, tmp_path / "final_model_random", tiny_data[1], config)
    assert summary["final_eval_loss"] == pytest.approx(expected, rel=2e-6)


def test_evaluating_in_fp32_leaves_training_on_the_same_bits(tiny_llm, tiny_data, tmp_path):
    """An eval after every step (each one widening and narrowing the base) trains the same
    adapter, bit for bit, as evals at the start and the end only."""
    often = _bf16_student(tiny_llm, tiny_data, tmp_path / "often", eval_every=1)
    rarely = _bf16_student(tiny_llm, tiny_data, tmp_path / "rarely", eval_every=0)
    assert often["final_eval_loss"] == rarely["final_eval_loss"]
    a = load_file(tmp_path / "often" / "final_model_random" / "adapter_model.safetensors")
    b = load_file(tmp_path / "rarely" / "final_model_random" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_only_plain_single_process_runs_widen_their_weights():
    """fp32 runs are evaluated as they train; a bf16 run in fp32 unless an engine (DDP,
    FSDP, DeepSpeed, even with one process) owns its parameters."""

    class Stub:
        mixed_precision = "no"
        distributed_type = "DistributedType.NO"

    assert eval_precision(Stub()) == "fp32"
    Stub.mixed_precision = "bf16"
    assert eval_precision(Stub()) == "fp32"
    for kind in ("MULTI_GPU", "FSDP", "DEEPSPEED", "MULTI_CPU"):
        Stub.distributed_type = f"DistributedType.{kind}"
        assert eval_precision(Stub()) == "bf16", kind


def test_an_fp32_pass_takes_the_exact_per_row_kernel(monkeypatch):
    """The varlen kernels take bf16/fp16 only: inside an fp32 pass a packed batch built for
    one runs the per-row SDPA, and outside it the batch's own kernel again."""
    import dataclasses

    from svdlora_cli.training import attention_kernels as kernels
    from svdlora_cli.training import packing

    def varlen(*args, **kwargs):
        raise AssertionError("a varlen kernel ran in an fp32 pass")

    monkeypatch.setitem(kernels.KERNEL_FUNCTIONS, "varlen", varlen)
    q = torch.randn(1, 2, 6, 4, generator=torch.Generator().manual_seed(0))
    rows = kernels.PackedRows((2, 4), torch.tensor([0, 2, 6], dtype=torch.int32), "varlen")
    exact = dataclasses.replace(rows, kernel="sdpa_rows")
    with packing.exact_rows():
        out, _ = packing.packed_attention(None, q, q, q, None, packed_rows=rows)
    assert torch.equal(out, packing.packed_attention(None, q, q, q, None, packed_rows=exact)[0])
    with pytest.raises(AssertionError, match="varlen kernel ran"):
        packing.packed_attention(None, q, q, q, None, packed_rows=rows)


def test_older_bf16_runs_are_not_reused_and_fp32_runs_still_are(tiny_llm, tiny_data, monkeypatch):
    """A finished bf16/fp16 run is reused by its key: the key now says its eval losses are
    fp32, so a run whose eval ran under autocast is trained again; fp32 keys are unchanged."""
    from svdlora_cli.data import Datasets
    from svdlora_cli.store import cache
    from svdlora_cli.training import records

    seen: list[dict] = []
    real = cache.content_key
    monkeypatch.setattr(
        cache, "content_key", lambda kind, **parts: seen.append(parts) or real(kind, **parts)
    )
    data = Datasets(None, None, tiny_data[0], tiny_data[1])
    content = records.comparable_identity(str(tiny_llm), data)
    for precision in ("no", "bf16"):
        config = TrainConfig(max_length=64, device="cpu", precision=precision)
        records.run_key("student-run", str(tiny_llm), data, config, content)
    assert "evaluation" not in seen[0] and seen[1]["evaluation"] == "fp32"
