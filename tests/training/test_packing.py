"""Packed micro-batches against padded ones: same targets, same loss, same gradients."""

from __future__ import annotations

import logging
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from svdlora_cli.data import IGNORE_INDEX, collate, load_examples, tokenize_examples
from svdlora_cli.training import attention_kernels as kernels
from svdlora_cli.training import packing
from svdlora_cli.training.config import TrainConfig
from svdlora_cli.training.loop import _to, make_optimizer, real_tokens
from svdlora_cli.training.loss import loss_sum
from svdlora_cli.training.steplog import read_step_log
from svdlora_cli.training.student import base_plan, train_student
from tests.conftest import build_tiny_llm, write_rows

ROWS = [0, 3, 7, 11]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny Llama and Qwen2 (grouped-query attention) with LoRA, and rows of varied length."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("packing")
    rows = write_rows(root / "rows.json", 12, offset=5)
    out = {}
    for arch in ("llama", "qwen2"):
        folder = build_tiny_llm(root / arch, arch)
        tok = AutoTokenizer.from_pretrained(folder)
        data = tokenize_examples(load_examples(rows), tok, 64)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        lora = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"])
        model = get_peft_model(model, lora)
        for name, p in model.named_parameters():
            if "lora_B" in name:  # nonzero B so the adapters carry gradient to A too
                torch.nn.init.normal_(p, std=0.02)
        out[arch] = SimpleNamespace(folder=folder, tok=tok, data=data, model=model)
    return out


def test_pack_lays_rows_end_to_end_with_the_same_targets(setup):
    data = setup["llama"].data
    lengths = [len(data.input_ids[i]) for i in ROWS]
    assert len(set(lengths)) > 1, "the rows must differ in length for this test to mean much"
    batch = packing.pack(ROWS, data)
    assert batch["input_ids"].shape == (1, sum(lengths))
    rows = batch["packed_rows"]
    assert rows.lengths == tuple(lengths)
    assert rows.cu_seqlens.dtype == torch.int32
    assert rows.cu_seqlens.tolist() == [0, *torch.tensor(lengths).cumsum(0).tolist()]
    assert batch["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    # The (context, target) pairs: per row, target token t+1 predicted at position t.
    padded = collate(ROWS, data, pad_id=0)
    expected = [
        (row, t, int(padded["labels"][row, t + 1]))
        for row in range(len(ROWS))
        for t in range(lengths[row] - 1)
        if padded["labels"][row, t + 1] != IGNORE_INDEX
    ]
    starts = rows.cu_seqlens.tolist()
    got = []
    for position, target in enumerate(batch["labels"][0, 1:].tolist()):
        if target == IGNORE_INDEX:
            continue
        row = max(r for r in range(len(ROWS)) if starts[r] <= position)
        got.append((row, position - starts[row], target))
    assert got == expected
    assert real_tokens(batch) == real_tokens(padded) == sum(lengths)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_packed_loss_and_gradients_match_padded(setup, arch):
    case = setup[arch]
    model = case.model
    trainable = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(batch):
        model.zero_grad(set_to_none=True)
        loss, count = loss_sum(model, batch)
        loss.backward()
        return float(loss), count, [p.grad.clone() for p in trainable]

    model.set_attn_implementation("sdpa")
    padded = loss_and_grads(collate(ROWS, case.data, case.tok.pad_token_id))
    previous = packing.enable(model.base_model.model)
    try:
        packed = loss_and_grads(packing.pack(ROWS, case.data))
    finally:
        model.base_model.model.set_attn_implementation(previous)
    assert packed[1] == padded[1]
    assert packed[0] == pytest.approx(padded[0], rel=1e-5)
    for a, b in zip(packed[2], padded[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, **causal):
    """A CPU stand-in for torch's varlen_attn ([tokens, heads, dim] layout, causal)."""
    assert causal in (
        {"window_size": (-1, 0)},
        {"is_causal": True},
        {"window_size": (-1, 0), "enable_gqa": True},
    )
    assert max_q == max_k == int((cu_q[1:] - cu_q[:-1]).max())
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    out = [
        F.scaled_dot_product_attention(
            q[a:b].transpose(0, 1),
            k[a:b].transpose(0, 1),
            v[a:b].transpose(0, 1),
            is_causal=True,
            scale=scale,
        ).transpose(0, 1)
        for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True)
    ]
    return torch.cat(out)


@pytest.mark.parametrize(
    ("kernel", "torch_varlen"),
    [
        ("sdpa_rows", None),
        ("varlen", (reference_varlen, {"window_size": (-1, 0)}, True)),  # torch >= 2.11
        ("varlen", (reference_varlen, {"is_causal": True}, False)),  # torch 2.10: no GQA
    ],
)
def test_packed_attention_is_causal_attention_per_row(kernel, torch_varlen, monkeypatch):
    """Against an explicit per-row softmax(QK^T / sqrt(d) + causal mask) V. The varlen
    kernel runs on CUDA only; a CPU stand-in checks the layout and arguments we hand it."""
    monkeypatch.setattr(kernels, "_varlen", lambda: torch_varlen)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 9, 8, generator=gen)
    k = torch.randn(1, 2, 9, 8, generator=gen)
    v = torch.randn(1, 2, 9, 8, generator=gen)
    rows = kernels.PackedRows((4, 5), torch.tensor([0, 4, 9], dtype=torch.int32), kernel)
    out, _ = packing.packed_attention(None, q, k, v, None, packed_rows=rows)
    assert out.shape == (1, 9, 4, 8)
    for start, end in [(0, 4), (4, 9)]:
        n = end - start
        kr = k[:, :, start:end].repeat_interleave(2, dim=1)
        vr = v[:, :, start:end].repeat_interleave(2, dim=1)
        scores = q[:, :, start:end] @ kr.transpose(-1, -2) / 8**0.5
        scores = scores.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
        expected = (F.softmax(scores, dim=-1) @ vr).transpose(1, 2)
        torch.testing.assert_close(out[:, start:end], expected, rtol=1e-5, atol=1e-6)


def test_a_model_whose_attention_crosses_rows_falls_back_to_padding(setup, monkeypatch, caplog):
    """If packed attention leaked across rows, the pre-training check must catch it."""
    case = setup["llama"]

    def leaky(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        out = F.scaled_dot_product_attention(
            query, key, value, is_causal=True, scale=scaling, enable_gqa=True
        )
        return out.transpose(1, 2).contiguous(), None

    monkeypatch.setattr(packing, "packed_attention", leaky)
    inner = case.model.base_model.model
    with caplog.at_level(logging.WARNING, logger="svdlora"):
        batching = packing.make_batcher(
            case.model, inner, case.data, case.tok.pad_token_id, True, 64, lambda b: b
        )
    assert "packed loss differs from the padded one" in caplog.text
    assert batching.attention == "padded"
    assert "attention_mask" in batching.build(ROWS, case.data)
    assert inner.config._attn_implementation != packing.ATTENTION
    monkeypatch.undo()
    packing.register()


def test_the_batcher_packs_a_supported_model_and_pads_when_told(setup):
    case = setup["llama"]
    inner = case.model.base_model.model
    args = (case.data, case.tok.pad_token_id)
    padded_batch = collate(ROWS, case.data, case.tok.pad_token_id)
    with torch.no_grad():
        inner.set_attn_implementation("sdpa")
        reference, _ = loss_sum(case.model, padded_batch)
        try:
            packed = packing.make_batcher(case.model, inner, *args, True, 64, lambda b: b)
            assert packed.attention == "packed/sdpa_rows"  # the CPU's only kernel
            batch = packed.build(ROWS, case.data)
            assert batch["packed_rows"].kernel == "sdpa_rows"
            assert batch["answer_tokens"] == int((padded_batch["labels"][:, 1:] != -100).sum())
            assert inner.config._attn_implementation == packing.ATTENTION
            # Only packed rows reach the packed implementation; anything else is a bug.
            with pytest.raises(RuntimeError, match="needs packed rows"):
                loss_sum(case.model, padded_batch)
            packed.restore()
            assert inner.config._attn_implementation == "sdpa"
            again, _ = loss_sum(case.model, padded_batch)
            assert float(again) == pytest.approx(float(reference), rel=1e-6)
        finally:
            inner.set_attn_implementation("sdpa")
    padded = packing.make_batcher(case.model, inner, *args, False, 64, lambda b: b)
    assert padded.attention == "padded"
    assert "attention_mask" in padded.build(ROWS, case.data)


def _kernel_kept(case, monkeypatch, caplog, attend) -> tuple[str, str]:
    """make_batcher's choice with `attend` as the varlen kernel (tried first), and its log."""
    monkeypatch.setattr(packing, "kernel_candidates", lambda device, low: ["varlen", "sdpa_rows"])
    monkeypatch.setitem(kernels.KERNEL_FUNCTIONS, "varlen", attend)
    caplog.clear()
    inner = case.model.base_model.model
    with caplog.at_level(logging.INFO, logger="svdlora"):
        batching = packing.make_batcher(
            case.model, inner, case.data, case.tok.pad_token_id, True, 64, lambda b: b
        )
    batching.restore()
    return batching.attention, caplog.text


def test_a_kernel_that_fails_or_disagrees_is_skipped_for_the_next(setup, monkeypatch, caplog):
    """On a GPU the variable-length kernels come first; one that raises (wrong dtype,
    missing build) or gives another loss is passed over, never trusted."""

    def broken(*args, **kwargs):
        raise NotImplementedError("no kernel for this device")

    kept, said = _kernel_kept(setup["llama"], monkeypatch, caplog, broken)
    assert kept == "packed/sdpa_rows" and "varlen: NotImplementedError" in said

    def across_rows(q, k, v, rows, scale):  # runs, but attends across rows: another loss
        attended = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scale, enable_gqa=True
        )
        return attended.transpose(1, 2)

    kept, said = _kernel_kept(setup["llama"], monkeypatch, caplog, across_rows)
    assert kept == "packed/sdpa_rows" and "varlen: packed loss" in said


def strict_varlen(q, k, v, *args, **kwargs):
    """The stand-in, refusing what torch's and flash-attn's varlen kernels refuse."""
    if not q.dtype == k.dtype == v.dtype or q.dtype not in (torch.bfloat16, torch.float16):
        raise RuntimeError(f"one 16-bit dtype expected, got {q.dtype}, {k.dtype}, {v.dtype}")
    return reference_varlen(q, k, v, *args, **kwargs)


def test_the_varlen_kernel_serves_fp32_weights_under_autocast(setup, monkeypatch):
    """The teacher's mixed precision: fp32 weights under bf16 autocast. The rotary
    embedding's fp32 cos/sin leave q and k fp32 while v is bf16; the kernel gets all three
    in bf16, is kept by the check, and a packed step trains through it."""
    case = setup["llama"]
    inner = case.model.base_model.model
    monkeypatch.setattr(packing, "kernel_candidates", lambda device, low: ["varlen", "sdpa_rows"])
    monkeypatch.setattr(kernels, "_varlen", lambda: (strict_varlen, {"window_size": (-1, 0)}, True))
    seen = []
    attend = kernels.KERNEL_FUNCTIONS["varlen"]

    def watched(q, k, v, rows, scale):
        seen.append((q.dtype, k.dtype, v.dtype))
        return attend(q, k, v, rows, scale)

    monkeypatch.setitem(kernels.KERNEL_FUNCTIONS, "varlen", watched)

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    args = (case.data, case.tok.pad_token_id, True, 64, lambda b: b, autocast, True)
    batching = packing.make_batcher(case.model, inner, *args)
    try:
        assert batching.attention == "packed/varlen"
        assert (torch.float32, torch.float32, torch.bfloat16) in seen  # what came in
        case.model.zero_grad()
        with autocast():
            loss, count = loss_sum(case.model, batching.build(ROWS, case.data))
        (loss / count).backward()
        grads = [p.grad for n, p in case.model.named_parameters() if "lora_A" in n]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(bool(g.abs().sum() > 0) for g in grads)
    finally:
        batching.restore()
        case.model.zero_grad()


class WrongBackward(torch.autograd.Function):
    """The right attention forward with a backward that drops half of each gradient: what
    a kernel with a broken backward would hand the optimizer."""

    @staticmethod
    def forward(ctx, q, k, v, rows, scale):
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_() for x in (q, k, v)]
            out = kernels.sdpa_rows(*leaves, rows, scale)
        ctx.save_for_backward(out, *leaves)
        return out.detach()

    @staticmethod
    def backward(ctx, grad):
        out, *leaves = ctx.saved_tensors
        grads = torch.autograd.grad(out, leaves, grad)
        return (*(g * 0.5 for g in grads), None, None)


def test_a_kernel_with_a_wrong_backward_is_refused_before_training(setup, monkeypatch, caplog):
    """Its packed loss is right, so only the gradient check can tell; a backward that
    raises is refused the same way, naming the error."""
    kept, said = _kernel_kept(setup["llama"], monkeypatch, caplog, WrongBackward.apply)
    assert kept == "packed/sdpa_rows"
    assert "varlen: its dq differs from the per-row SDPA's by 0.5" in said

    def no_backward(q, k, v, rows, scale):
        return kernels.sdpa_rows(q.detach(), k.detach(), v.detach(), rows, scale)

    kept, said = _kernel_kept(setup["llama"], monkeypatch, caplog, no_backward)
    assert kept == "packed/sdpa_rows" and "varlen: RuntimeError" in said


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_kernel_gradients_agree_for_a_right_kernel(setup, arch, monkeypatch):
    """The CPU stand-in of torch's varlen kernel (GQA heads of the model, uneven rows),
    in fp32 and in bf16 under autocast, is within the tolerance; so is SDPA itself."""
    from svdlora_cli.training.attention_kernels import head_shape
    from svdlora_cli.training.kernel_grads import kernel_gradients_wrong

    config = setup[arch].model.base_model.model.config
    assert head_shape(config) == (4, 2, 8)  # hidden 32 over 4 heads; Qwen2 has no head_dim
    assert head_shape(SimpleNamespace(num_attention_heads=6, hidden_size=48)) == (6, 6, 8)
    text = SimpleNamespace(num_attention_heads=6, num_key_value_heads=3, hidden_size=48)
    assert head_shape(SimpleNamespace(get_text_config=lambda: text)) == (6, 3, 8)  # multimodal
    monkeypatch.setattr(kernels, "_varlen", lambda: (strict_varlen, {"window_size": (-1, 0)}, True))
    cpu = torch.device("cpu")
    assert kernel_gradients_wrong("sdpa_rows", config, cpu) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert kernel_gradients_wrong("varlen", config, cpu) is None
    monkeypatch.setattr(
        kernels, "_varlen", lambda: (reference_varlen, {"window_size": (-1, 0)}, True)
    )
    assert kernel_gradients_wrong("varlen", config, cpu) is None  # fp32 without autocast


class HostReads(TorchFunctionMode):
    """Counts the calls that read a tensor's values back to the host: on a GPU each one
    waits for every queued kernel (tolist, item, int/float/bool of a tensor, nonzero, and
    boolean-mask indexing, whose output size depends on the values)."""

    NAMES = frozenset(
        {"tolist", "item", "__int__", "__float__", "__bool__", "__index__", "numpy"}
        | {"nonzero", "argwhere", "masked_select", "unique", "nonzero_static"}
    )

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        index = args[1] if name == "__getitem__" and len(args) > 1 else None
        parts = index if isinstance(index, tuple) else (index,)
        if name in self.NAMES or any(
            isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts
        ):
            self.calls[name] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_packed_step_reads_nothing_back_from_the_device(setup, arch):
    """Forward, loss and backward of a packed micro-batch: at most one device-to-host read
    (the issue's bound; today none). The batch is built on the host beforehand, as `fit`
    does, and the profiler's `_local_scalar_dense` events are counted as well."""
    from torch.profiler import profile

    case = setup[arch]
    inner = case.model.base_model.model
    batching = packing.make_batcher(
        case.model, inner, case.data, case.tok.pad_token_id, True, 64, lambda b: b
    )
    try:
        batch = _to(batching.build(ROWS, case.data), torch.device("cpu"))
        reads = HostReads()
        with profile() as prof, reads:
            loss, count = loss_sum(case.model, batch)
            loss.backward()
    finally:
        batching.restore()
        case.model.zero_grad(set_to_none=True)
    scalar_reads = sum(e.name == "aten::_local_scalar_dense" for e in prof.events())
    assert count == batch["answer_tokens"] > 0
    assert sum(reads.calls.values()) + scalar_reads <= 1, (reads.calls, scalar_reads)


def test_the_host_read_counter_sees_what_the_old_loss_did(setup):
    """The counter must catch the reads the loss made before (nonzero, a boolean mask,
    int() of a sum), or the test above proves nothing."""
    batch = collate(ROWS, setup["llama"].data, pad_id=0)
    reads = HostReads()
    with reads:
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE_INDEX
        torch.nonzero(keep.any(dim=0))
        _ = targets[keep]
        int(keep.sum())
    assert reads.calls == Counter({"nonzero": 1, "__getitem__": 1, "__int__": 1})


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"sliding_window": 16}, "sliding window (16) is shorter than --max-length (64)"),
        ({"attn_logit_softcapping": 50.0}, "soft-caps"),
        ({"layer_types": ["full_attention", "linear_attention"]}, "linear_attention layers"),
    ],
)
def test_attention_variants_packing_cannot_reproduce_are_refused(settings, fragment):
    model = SimpleNamespace(config=SimpleNamespace(**settings), set_attn_implementation=None)
    assert fragment in packing.unsupported_reason(model, 64)


def test_a_window_longer_than_every_row_is_no_obstacle():
    config = SimpleNamespace(sliding_window=4096, use_sliding_window=True)
    model = SimpleNamespace(config=config, set_attn_implementation=None)
    assert packing.unsupported_reason(model, 512) is None


def test_training_packed_and_padded_ends_at_the_same_adapter(tiny_llm, tmp_path):
    """Three optimizer steps both ways: same losses, same tokens, same trained adapter."""
    from safetensors.torch import load_file

    rows = write_rows(tmp_path / "rows.json", 12, offset=5)
    plan = base_plan(str(tiny_llm), 4, None)
    results = {}
    for packed in (True, False):
        config = TrainConfig(
            epochs=1, max_steps=3, learning_rate=3e-3, max_length=64, device="cpu", packing=packed
        )
        out = tmp_path / str(packed)
        summary = train_student(str(tiny_llm), "random", out, config, plan, data_path=str(rows))
        log = read_step_log(summary["artifacts"]["log"])
        adapter = load_file(out / "final_model_random" / "adapter_model.safetensors")
        results[packed] = (summary, log, adapter)
    (s1, log1, a1), (_, log0, a0) = results[True], results[False]
    assert [r.tokens for r in log1] == [r.tokens for r in log0]
    for r1, r0 in zip(log1, log0, strict=True):
        assert r1.loss == pytest.approx(r0.loss, rel=1e-5)
    assert a1.keys() == a0.keys()
    for name in a1:
        torch.testing.assert_close(a1[name], a0[name], rtol=1e-4, atol=1e-6)
    assert s1["final_loss"] < s1["initial_loss"]


def test_adamw_is_fused_on_cpu():
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = make_optimizer([param], TrainConfig(), torch.device("cpu"))
    assert optimizer.defaults["fused"] is True
