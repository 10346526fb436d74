"""LoRA-One on a tiny Llama: the start is one normalised rank-r step against the gradient.

The start is checked against an independent computation on an untouched base: the
gradient of the mean answer-token loss over the init batches by plain autograd, its SVD
in float64, then the reference's formula (github.com/YuanheZ/LoRA-One, run_exp.py):
B = U_r sqrt(S_r / S_0), A = sqrt(S_r / S_0) Vh_r, both / sqrt(128), on the rsLoRA scale
16 / sqrt(r). Then the CLI trains it, and its adapter reloads on the plain base.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from svdlora_cli.data import collate, prepare_data
from svdlora_cli.errors import SvdloraError
from svdlora_cli.models.loading import load_model, load_tokenizer
from svdlora_cli.training import arm as arm_module
from svdlora_cli.training.accelerator import make_accelerator
from svdlora_cli.training.data_inits import init_batches
from svdlora_cli.training.init_registry import INITS, get_init, init_help
from svdlora_cli.training.init_start import InitStart
from svdlora_cli.training.lora_one import (
    lora_one_factors,
    lora_one_gradient_pass,
    lora_one_gradient_tokens,
)
from svdlora_cli.training.student import base_plan, build_student
from tests.conftest import TINY_RUN, invoke_json
from tests.training.init_scaffold import CONFIG, RANK, init_setup, start_model
from tests.training.init_scaffold import logits as model_logits


@pytest.fixture(scope="module")
def setup(tiny_llm, tiny_data):
    return init_setup(tiny_llm, tiny_data)


def _start(tiny_llm, setup, config=CONFIG, plan=None):
    return start_model(tiny_llm, setup, "lora-one", config, plan)


def _gradients(base, setup, batches):
    """d(mean answer-token loss over `batches`)/dW of every target, by plain autograd in float64."""
    base = base.double()
    weights = [base.get_submodule(m).weight for m in setup["plan"].ranks]
    pad = setup["tokenizer"].pad_token_id
    rows = [collate(b, setup["train"], pad) for b in batches]
    counts = [int((r["labels"][:, 1:] != -100).sum()) for r in rows]
    loss = sum(base(**r).loss * n for r, n in zip(rows, counts, strict=True)) / sum(counts)
    grads = torch.autograd.grad(loss, weights)
    return dict(zip(setup["plan"].ranks, grads, strict=True))


def _reference(gradient, rank):
    """The reference's (B, A) on its own scale 16 / sqrt(r), from an exact float64 SVD."""
    U, S, Vh = torch.linalg.svd(-gradient.double(), full_matrices=False)
    root = torch.sqrt(S[:rank]) / torch.sqrt(S[0]) / 128**0.5
    return U[:, :rank] * root, root[:, None] * Vh[:rank], 16 / rank**0.5


@pytest.fixture(scope="module")
def expected(tiny_llm, setup):
    grads = _gradients(load_model(str(tiny_llm)), setup, setup["batches"])
    return {m: _reference(g, setup["plan"].ranks[m]) for m, g in grads.items()}


def test_the_record_reads_data_and_keeps_the_base():
    method = get_init("lora-one")
    assert list(INITS).index("lora-one") == list(INITS).index("lora-ga") + 1
    assert method.needs_data and not method.rewrites_base and not method.base_start
    assert not (method.seedless or method.costly or method.needs_teacher)
    assert method.init_lora_weights is True and "\n" not in method.help
    assert "SVD of the one-step full gradient" in method.help
    assert "lora-one: LoRA-One" in init_help()


def test_the_start_is_the_reference_step_on_the_plan_scale(tiny_llm, setup, expected):
    model = _start(tiny_llm, setup)
    plan = setup["plan"]
    assert plan.scale == 1.0  # alpha = r: our scale differs from the reference's rsLoRA one
    for module in plan.ranks:
        layer = model.base_model.model.get_submodule(module)
        A, B = layer.lora_A["default"].weight.double(), layer.lora_B["default"].weight.double()
        ref_B, ref_A, ref_scale = expected[module]
        update = ref_scale * ref_B @ ref_A
        got = plan.scale * B @ A
        assert (got - update).norm() / update.norm() < 1e-4, module
        # the reference's factors, rescaled by sqrt(ref_scale / scale), up to each pair's sign
        factor = (ref_scale / plan.scale) ** 0.5
        signs = torch.sign((B * ref_B).sum(dim=0))
        torch.testing.assert_close(B * signs, ref_B * factor, atol=1e-5, rtol=1e-3)
        torch.testing.assert_close(A * signs[:, None], ref_A * factor, atol=1e-5, rtol=1e-3)
        # the base weight is untouched: the start is W + the step
        W = layer.get_base_layer().weight
        assert torch.equal(W, setup["base"].get_submodule(module).weight), module
        assert W.grad is None and not W.requires_grad  # no gradient left behind


def test_step_zero_is_the_base_moved_by_the_reference_update(tiny_llm, setup, expected):
    model = _start(tiny_llm, setup)
    moved = load_model(str(tiny_llm)).eval()
    with torch.no_grad():
        for module, (ref_B, ref_A, ref_scale) in expected.items():
            moved.get_submodule(module).weight.add_((ref_scale * ref_B @ ref_A).float())
    logits = model_logits(model, setup["probe"])
    torch.testing.assert_close(logits, model_logits(moved, setup["probe"]), atol=1e-5, rtol=0)
    assert (logits - setup["base_logits"]).abs().max() > 1e-3  # not the base


def test_the_step_lowers_the_loss_on_the_init_batches(tiny_llm, setup):
    model = _start(tiny_llm, setup)
    probe = setup["probe"]
    with torch.no_grad():
        before = setup["base"](**probe).loss
        after = model(**probe).loss
    assert after < before


def test_another_seed_reads_other_batches_and_starts_elsewhere(tiny_llm, setup):
    other = dataclasses.replace(CONFIG, seed=CONFIG.seed + 1)
    batches = init_batches(len(setup["train"]), other.batch_size, other.seed)
    assert batches != setup["batches"]
    grads = _gradients(load_model(str(tiny_llm)), setup, batches)
    model = _start(tiny_llm, setup, other)
    for module, gradient in grads.items():
        ref_B, ref_A, ref_scale = _reference(gradient, RANK)
        layer = model.base_model.model.get_submodule(module)
        got = layer.lora_B["default"].weight.double() @ layer.lora_A["default"].weight.double()
        update = ref_scale * ref_B @ ref_A
        assert (got - update).norm() / update.norm() < 1e-4, module


def test_the_factors_are_balanced_and_blind_to_the_gradients_size():
    g = torch.Generator().manual_seed(0)
    G = torch.randn(12, 7, generator=g, dtype=torch.float64)
    B, A = lora_one_factors(G, 3, 0.5)
    U, S, Vh = torch.linalg.svd(-G, full_matrices=False)
    step = 16 / (128 * 3**0.5)
    want = step * (U[:, :3] * S[:3]) @ Vh[:3] / S[0]
    torch.testing.assert_close((0.5 * B @ A).double(), want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(B.T @ B, A @ A.T, atol=1e-6, rtol=1e-5)  # sqrt(S) on both sides
    assert torch.linalg.matrix_norm(0.5 * B @ A, 2).item() == pytest.approx(step, rel=1e-5)
    B10, A10 = lora_one_factors(1000 * G, 3, 0.5)
    torch.testing.assert_close(B10 @ A10, B @ A, atol=1e-6, rtol=1e-5)
    with pytest.raises(SvdloraError, match="zero gradient"):
        lora_one_factors(torch.zeros(4, 3), 2, 1.0)


def test_the_gradient_pass_is_counted(tiny_llm, setup):
    base = load_model(str(tiny_llm))
    start = InitStart(
        base,
        None,
        setup["plan"],
        CONFIG.seed,
        train=setup["train"],
        batches=setup["batches"],
        pad_id=setup["tokenizer"].pad_token_id,
    )
    probe = setup["probe"]
    real = int(probe["attention_mask"].sum())
    answers = int((probe["labels"][:, 1:] != -100).sum())
    counted = lora_one_gradient_pass(start)
    assert lora_one_gradient_tokens(start) == counted.tokens == real
    assert counted.answer_tokens == answers and len(counted.row_lengths) == len(probe["input_ids"])
    # the builder's forward passes see exactly these tokens
    seen = []
    forward = base.forward

    def counting(*args, **kwargs):
        seen.append(int(kwargs["attention_mask"].sum()))
        return forward(*args, **kwargs)

    base.forward = counting
    _start_on(base, setup)
    assert sum(seen) == real and len(seen) == len(setup["batches"])


def _start_on(base, setup):
    return build_student(
        base,
        setup["plan"],
        "lora-one",
        CONFIG,
        0.0,
        setup["train"],
        setup["tokenizer"].pad_token_id,
        make_accelerator("cpu", "no"),
    )


def test_cli_trains_lora_one_and_its_adapter_reloads_on_the_plain_base(
    tiny_llm, tiny_data, setup, tmp_path, monkeypatch
):
    from peft import PeftModel

    trained, real_fit = {}, arm_module.fit

    def recording_fit(model, *args, **kwargs):
        result = real_fit(model, *args, **kwargs)
        trained["logits"] = model_logits(model.eval(), setup["probe"])
        return result

    monkeypatch.setattr(arm_module, "fit", recording_fit)
    doc = invoke_json(
        "train",
        "-b",
        tiny_llm,
        "--train-data",
        tiny_data[0],
        "--init",
        "lora-one",
        "--lora-rank",
        str(RANK),
        "--max-steps",
        "2",
        "-o",
        tmp_path,
        "--epochs",
        "2",
        *TINY_RUN,
    )
    assert [a["name"] for a in doc["arms"]] == ["lora-one"]
    assert (tmp_path / "training_log_lora-one.csv").is_file()
    adapter = tmp_path / "final_model_lora-one"
    model = PeftModel.from_pretrained(load_model(str(tiny_llm)).eval(), adapter).eval()
    reloaded = model_logits(model, setup["probe"])
    torch.testing.assert_close(reloaded, trained["logits"], atol=1e-4, rtol=0)
    assert (reloaded - setup["base_logits"]).abs().max() > 1e-4


def test_the_step_follows_each_modules_rank_and_the_plans_alpha(tiny_llm, setup):
    # rank 20 is clamped to 16 on k_proj (16 x 32): its step is 16 / (128 sqrt(16)), and
    # alpha = 5 gives PEFT the scale 5 / 20 (rsLoRA would give the reference 16 / sqrt(r))
    plan = base_plan(str(tiny_llm), 20, 5.0)
    clamped = [m for m, r in plan.ranks.items() if r < 20]
    assert clamped and plan.scale == 0.25
    grads = _gradients(load_model(str(tiny_llm)), setup, setup["batches"])
    model = _start(tiny_llm, setup, plan=plan)
    for module, rank in plan.ranks.items():
        ref_B, ref_A, ref_scale = _reference(grads[module], rank)
        layer = model.base_model.model.get_submodule(module)
        assert layer.lora_A["default"].weight.shape[0] == rank
        B, A = layer.lora_B["default"].weight.double(), layer.lora_A["default"].weight.double()
        update = ref_scale * ref_B @ ref_A
        assert (plan.scale * B @ A - update).norm() / update.norm() < 1e-4, module


def test_gpt2_conv1d_weights_take_the_transposed_gradient(tmp_path_factory, tiny_data):
    from tests.conftest import build_tiny_llm

    gpt2 = build_tiny_llm(tmp_path_factory.mktemp("gpt2") / "base", "gpt2")
    tokenizer = load_tokenizer(str(gpt2))
    train = prepare_data(tokenizer, str(tiny_data[0]), None, CONFIG.max_length).train
    plan = base_plan(str(gpt2), RANK, None)
    assert plan.fan_in_fan_out
    setup = {
        "tokenizer": tokenizer,
        "train": train,
        "plan": plan,
        "batches": init_batches(len(train), CONFIG.batch_size, CONFIG.seed),
    }
    grads = _gradients(load_model(str(gpt2)), setup, setup["batches"])
    model = _start(gpt2, setup)
    for module, gradient in grads.items():
        ref_B, ref_A, ref_scale = _reference(gradient.T, RANK)  # Conv1D: (in, out)
        layer = model.base_model.model.get_submodule(module)
        B, A = layer.lora_B["default"].weight.double(), layer.lora_A["default"].weight.double()
        update = ref_scale * ref_B @ ref_A
        assert (plan.scale * B @ A - update).norm() / update.norm() < 1e-4, module
