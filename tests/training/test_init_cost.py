"""Init FLOPs against hand-written formulas for one module shape, and an arm's passes
against the hand count of flops.py's tests."""

from __future__ import annotations

import dataclasses

import pytest

from svdlora_cli.training.init_cost import (
    COSTS,
    InitPasses,
    arm_init_flops,
    init_flops,
    lowrank_svd_flops,
    qr_flops,
    thin_svd_flops,
)
from svdlora_cli.training.init_registry import INITS, get_init
from svdlora_cli.training.inits import LoraPlan
from tests.training.test_flops import LLAMA, _hand_count, _llama, _lora, _tiny_rows

M, N, R = 64, 32, 4  # one target: out 64, in 32, rank 4
SHAPES, RANKS = {"w": (M, N)}, {"w": R}


def test_matrix_formulas_by_hand():
    # Thin SVD, m = 64 >= n = 32: R-SVD 6mn^2 + 20n^3 = 1,048,576 beats Golub-Kahan
    # 14mn^2 + 8n^3 = 1,179,648; for a square matrix Golub-Kahan wins (22n^3 < 26n^3).
    assert thin_svd_flops(64, 32) == 1_048_576 == thin_svd_flops(32, 64)
    assert thin_svd_flops(32, 32) == 22 * 32**3
    # Householder QR, R then the thin Q: 2n^2(m - n/3) each.
    assert qr_flops(64, 32) == pytest.approx(4 * 32**2 * (64 - 32 / 3))
    assert qr_flops(32, 64) == pytest.approx(2 * 32**2 * (64 - 32 / 3) + 2 * 32**2 * (32 - 32 / 3))
    # svd_lowrank(q = 8, niter = 4) of 64 x 32: 10 products with A, 5 QRs of 64 x 8,
    # 4 of 32 x 8, the SVD of 8 x 32 and U = Q U_B.
    products = 10 * 2 * 64 * 32 * 8
    qrs = 5 * 4 * 64 * (64 - 8 / 3) + 4 * 4 * 64 * (32 - 8 / 3)
    small_svd = min(14 * 32 * 64 + 8 * 512, 6 * 32 * 64 + 20 * 512)
    assert lowrank_svd_flops(64, 32, 8) == pytest.approx(products + qrs + small_svd + 2 * 64 * 64)


def test_each_cost_kind_by_hand():
    svd, residual = 1_048_576, 2 * M * N * R
    passes = InitPasses(gradient=1e9, forward=4e8, tokens=100)

    def total(kind, **kw):
        return init_flops(kind, SHAPES, RANKS, passes, **kw)["total"]

    assert total("none") == 0
    assert total("delta-svd") == svd
    assert total("weight-svd") == svd + residual
    assert total("weight-qr") == pytest.approx(4 * N**2 * (M - N / 3) + residual)
    assert total("gradient-svd") == 1e9 + svd
    assert total("gradient-lowrank-svd") == pytest.approx(
        1e9 + lowrank_svd_flops(M, N, 4 * R) + residual
    )
    # EVA: 3 forward passes, PCA (q = 2r) of (T + r + 1) x in at each of the last 2.
    assert total("forward-pca", forward_passes=3) == pytest.approx(
        3 * 4e8 + 2 * lowrank_svd_flops(100 + R + 1, N, 2 * R)
    )
    # CorDA: X^T X over 100 tokens, inverse and its check, W C, SVD, Vh C^-1, residual.
    corda = 2 * N**2 * 100 + 2 * N**3 + 2 * N**3 + 2 * M * N**2 + svd + 2 * N * N**2 + residual
    assert total("forward-covariance") == pytest.approx(4e8 + corda)
    parts = init_flops("weight-svd", SHAPES, RANKS)
    assert parts == {
        "kind": "weight-svd",
        "passes": 0.0,
        "decomposition": svd,
        "products": residual,
        "total": svd + residual,
    }
    with pytest.raises(ValueError, match="unknown init cost"):
        init_flops("magic", SHAPES, RANKS)


def test_every_registered_init_names_a_known_cost():
    assert {n: INITS[n].cost for n in ("random", "gaussian", "svd", "pissa", "olora")} == {
        "random": "none",
        "gaussian": "none",
        "svd": "delta-svd",
        "pissa": "weight-svd",
        "olora": "weight-qr",
    }
    assert all(m.cost in COSTS for m in INITS.values())
    assert {INITS[n].cost for n in ("svd", "svd-sqrt", "subspace")} == {"delta-svd"}
    for name in ("lora-ga", "eva", "corda"):
        assert INITS[name].cost != "none", name


def _plan(targets):
    ranks = {f"model.layers.{i}.self_attn.{t}": 4 for i in range(2) for t in targets}
    return LoraPlan(ranks, 4, 8.0, tuple(ranks), fan_in_fan_out=False)


def test_an_arms_gradient_pass_is_the_frozen_model_plus_the_targets_weight_gradients():
    from tests.training.test_flops import _padded_hand_count

    data = _tiny_rows()
    batches = [(0, 1), (2, 3, 4)]
    model = _lora(_llama(), ["q_proj", "v_proj"])
    method = dataclasses.replace(get_init("lora-ga"), cost="gradient-svd")
    doc = arm_init_flops(method, model, _plan(["q_proj", "v_proj"]), data, batches, 0)
    tokens = sum(len(data.input_ids[i]) for b in batches for i in b)
    # Every weight frozen (4 per weight and token, the head 4 V d where answers are), then
    # dL/dW for q_proj (32 x 32) and v_proj (16 x 32) in both layers.
    frozen = sum(_padded_hand_count(data, b, base=4, lm_head=4) for b in batches)
    weight_grads = 2 * 2 * (32 * 32 + 16 * 32) * tokens
    assert doc["passes"] == frozen + weight_grads
    assert doc["decomposition"] == 2 * (thin_svd_flops(32, 32) + thin_svd_flops(16, 32))
    assert doc["total"] == doc["passes"] + doc["decomposition"] + doc["products"]
    # A forward-only init reads the same rows with logits at every token (no labels).
    eva = arm_init_flops(get_init("eva"), model, _plan(["q_proj", "v_proj"]), data, batches, 0)
    rows = [len(data.input_ids[i]) for b in batches for i in b]
    forward = _hand_count(**LLAMA, rows=rows, logits=tokens, base=6, lm_head=6) / 3
    assert eva["passes"] == 3 * forward and eva["forward_passes"] == 3 and eva["lower_bound"]
    assert arm_init_flops(get_init("eva"), model, _plan(["q_proj"]), data, batches, 0, 5)[
        "passes"
    ] == pytest.approx(5 * forward)


def test_teacher_free_and_svd_inits_need_no_rows():
    model = _lora(_llama(), ["q_proj"])
    plan = _plan(["q_proj"])
    assert arm_init_flops(get_init("random"), model, plan)["total"] == 0
    assert arm_init_flops(get_init("svd"), model, plan)["total"] == 2 * thin_svd_flops(32, 32)
    with pytest.raises(ValueError, match="needs the training rows"):
        arm_init_flops(get_init("corda"), model, plan)


def test_target_shapes_read_the_base_a_peft_model_and_conv1d_as_out_in():
    from transformers import AutoModelForCausalLM, GPT2Config

    from svdlora_cli.training.flops import linear_shapes

    names = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    expected = dict(zip(names, [(32, 32), (16, 32)], strict=True))
    assert linear_shapes(_llama(), names) == expected
    assert linear_shapes(_lora(_llama(), ["q_proj", "v_proj"]), names) == expected
    config = GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=96)
    gpt2 = AutoModelForCausalLM.from_config(config)
    assert linear_shapes(gpt2, ["transformer.h.0.attn.c_attn"]) == {
        "transformer.h.0.attn.c_attn": (96, 32)  # stored (in, out) = (32, 96)
    }
    with pytest.raises(ValueError, match="not a linear layer"):
        linear_shapes(gpt2, ["transformer.h.0.ln_1"])
