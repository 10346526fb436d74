"""Teacher-free baselines (olora, lora-ga, eva, corda) on a tiny Llama: each starts where PEFT says.

Every start is checked against an independent computation on the untouched base:
the QR of W (OLoRA), the SVD of the mean-loss gradient on the init batches
(LoRA-GA), the SVD of the centred layer inputs on those batches (EVA), the SVD of
W times the damped input covariance (CorDA). Then the trained adapters reload on
the plain base, and all arms share one batch order.
"""

from __future__ import annotations

import json
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

from svdlora_cli.data import collate
from svdlora_cli.models.loading import load_model
from svdlora_cli.training import arm as arm_module
from svdlora_cli.training.data_inits import INIT_BATCHES, init_batches
from svdlora_cli.training.init_registry import parse_inits
from svdlora_cli.training.student import base_plan, train_student
from tests.conftest import TINY_RUN, invoke_json
from tests.training.init_scaffold import CONFIG, RANK, init_setup, start_model
from tests.training.init_scaffold import logits as model_logits

HAS_ATTRS = find_spec("attr") is not None  # PEFT's CorDA module imports attrs
BASELINES = ("olora", "lora-ga", "eva", *(("corda",) if HAS_ATTRS else ()))


@pytest.fixture(scope="module")
def setup(tiny_llm, tiny_data):
    return init_setup(tiny_llm, tiny_data)


def _start(tiny_llm, setup, init):
    return start_model(tiny_llm, setup, init)


def _layers(model, plan):
    for module in plan.ranks:
        yield module, model.base_model.model.get_submodule(module)


def _base_weight(setup, module):
    return setup["base"].get_submodule(module).weight.detach().float()


def _subspace_cosines(rows: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between the row spaces of `rows` and `basis`."""
    q1, _ = torch.linalg.qr(rows.double().T)
    q2, _ = torch.linalg.qr(basis.double().T)
    return torch.linalg.svdvals(q1.T @ q2)


def test_init_names_parse():
    assert parse_inits("random,olora,lora-ga,eva") == ["random", "olora", "lora-ga", "eva"]


def test_init_batches_are_the_first_training_micro_batches():
    from svdlora_cli.training.schedule import batch_schedule

    schedule = batch_schedule(12, 4, 1, 3, 0)
    assert init_batches(12, 4, 0) == [s.micro_batches[0] for s in schedule][:INIT_BATCHES]
    assert len(init_batches(5, 4, 0)) == INIT_BATCHES  # runs into the next epoch's order


def test_olora_factors_are_the_qr_of_w_and_the_model_starts_at_the_base(tiny_llm, setup):
    model = _start(tiny_llm, setup, "olora")
    scale = setup["plan"].scale
    for module, layer in _layers(model, setup["plan"]):
        W = _base_weight(setup, module)
        Q, R = torch.linalg.qr(W)  # PEFT's olora_init: B = Q[:, :r], A = R[:r]
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        torch.testing.assert_close(A, R[:RANK], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(B, Q[:, :RANK], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            scale * B @ A, scale * Q[:, :RANK] @ R[:RANK], atol=1e-5, rtol=1e-5
        )
        residual = layer.get_base_layer().weight
        torch.testing.assert_close(residual, W - scale * B @ A, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        model_logits(model, setup["probe"]), setup["base_logits"], atol=1e-5, rtol=0
    )


def test_an_arm_off_the_shared_plan_is_refused(tiny_llm, setup):
    from svdlora_cli.errors import ModelMismatchError
    from svdlora_cli.training.inits import check_plan

    model = _start(tiny_llm, setup, "random")
    check_plan(model, setup["plan"])
    layer = next(layer for _, layer in _layers(model, setup["plan"]))
    layer.scaling["default"] *= 2  # what EVA's scaling adjustment would do
    with pytest.raises(ModelMismatchError, match="differ from the plan"):
        check_plan(model, setup["plan"])


def test_lora_ga_needs_twice_the_rank_in_every_target(tiny_llm, setup):
    from svdlora_cli.errors import SvdloraError

    wide = {**setup, "plan": base_plan(str(tiny_llm), 16, None)}  # k_proj is 16 x 32
    with pytest.raises(SvdloraError, match="k_proj is 16 wide at rank 16") as error:
        _start(tiny_llm, wide, "lora-ga")
    assert "--rank to 8" in error.value.hint


def _mean_loss_gradients(setup):
    """d(mean answer-token loss over the init batches)/dW for every target, by plain autograd."""
    base = setup["base"]
    weights = {m: base.get_submodule(m).weight for m in setup["plan"].ranks}
    for w in weights.values():
        w.grad = None
    pad = setup["tokenizer"].pad_token_id
    batches = [collate(b, setup["train"], pad) for b in setup["batches"]]
    total = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    loss = sum(base(**b).loss * int((b["labels"][:, 1:] != -100).sum()) for b in batches) / total
    grads = torch.autograd.grad(loss, list(weights.values()))
    return dict(zip(weights, grads, strict=True))


def test_lora_ga_factors_come_from_the_gradient_svd_and_the_model_starts_at_the_base(
    tiny_llm, setup
):
    model = _start(tiny_llm, setup, "lora-ga")
    grads = _mean_loss_gradients(setup)
    for module, layer in _layers(model, setup["plan"]):
        U, S, Vh = torch.linalg.svd(grads[module].double(), full_matrices=False)
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        # PEFT's default direction ArB2r: A = Vh[:r], B = U[:, r:2r] S[r:2r] * out^(1/4) / 4.
        assert _subspace_cosines(A, Vh[:RANK]).min() > 0.9999, module
        assert _subspace_cosines(B.T, U[:, RANK : 2 * RANK].T).min() > 0.9999, module
        stable = B.shape[0] ** 0.25 / 16**0.5
        torch.testing.assert_close(
            torch.linalg.svdvals(B.double()), S[RANK : 2 * RANK] * stable, rtol=1e-4, atol=1e-9
        )
        residual = layer.get_base_layer().weight
        W = _base_weight(setup, module)
        torch.testing.assert_close(residual, W - setup["plan"].scale * B @ A, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        model_logits(model, setup["probe"]), setup["base_logits"], atol=1e-5, rtol=0
    )


def _layer_inputs(setup):
    """Every target layer's inputs at answer-token positions of the init batches."""
    base, probe = setup["base"], setup["probe"]
    keep = (probe["attention_mask"] > 0) & (probe["labels"] != -100)
    seen, hooks = {}, []
    for module in setup["plan"].ranks:

        def hook(_layer, args, _out, module=module):
            seen[module] = args[0][keep].detach().double()

        hooks.append(base.get_submodule(module).register_forward_hook(hook))
    try:
        model_logits(base, probe)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_eva_rows_are_the_principal_directions_of_layer_inputs_and_b_is_zero(tiny_llm, setup):
    model = _start(tiny_llm, setup, "eva")
    inputs = _layer_inputs(setup)
    for module, layer in _layers(model, setup["plan"]):
        X = inputs[module]
        _, _, Vh = torch.linalg.svd(X - X.mean(dim=0), full_matrices=False)
        A, B = layer.lora_A["default"].weight.double(), layer.lora_B["default"].weight
        # row by row up to sign: |<a_i, v_i>| = 1 for unit rows
        cosines = (A * Vh[:RANK]).sum(dim=1).abs() / A.norm(dim=1)
        assert cosines.min() > 0.999, (module, cosines)
        assert torch.count_nonzero(B) == 0
        torch.testing.assert_close(
            layer.get_base_layer().weight, _base_weight(setup, module), atol=0, rtol=0
        )
    torch.testing.assert_close(
        model_logits(model, setup["probe"]), setup["base_logits"], atol=1e-5, rtol=0
    )


def _row_covariances(setup):
    """Per target: mean over init rows of X^T X, X = one unpadded row's inputs / max(X)."""
    base, pad = setup["base"], setup["tokenizer"].pad_token_id
    sums, hooks = {}, []
    for module in setup["plan"].ranks:

        def hook(_layer, args, _out, module=module):
            X = args[0][0].detach().double()
            X = X / X.max().abs()
            sums[module] = sums.get(module, 0) + X.T @ X

        hooks.append(base.get_submodule(module).register_forward_hook(hook))
    rows = [i for b in setup["batches"] for i in b]
    try:
        for i in rows:
            model_logits(base, collate([i], setup["train"], pad))
    finally:
        for h in hooks:
            h.remove()
    return {m: c / len(rows) for m, c in sums.items()}


@pytest.mark.skipif(not HAS_ATTRS, reason="PEFT's CorDA code needs the attrs package")
def test_corda_ipm_factors_come_from_w_times_the_input_covariance(tiny_llm, setup):
    model = _start(tiny_llm, setup, "corda")
    covariances = _row_covariances(setup)
    scale = setup["plan"].scale
    for module, layer in _layers(model, setup["plan"]):
        C = covariances[module]
        C = C + torch.eye(C.shape[0], dtype=C.dtype) * C.diagonal().mean() * 0.01  # PEFT's damping
        W = _base_weight(setup, module).double()
        U, S, Vh = torch.linalg.svd(W @ C, full_matrices=False)
        # IPM: s * B @ A = U_r S_r Vh_r C^-1, the top-r part of W C mapped back through C^-1
        expected = (U[:, :RANK] * S[:RANK]) @ Vh[:RANK] @ torch.linalg.inv(C)
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        got = scale * B.double() @ A.double()
        assert (got - expected).norm() / expected.norm() < 1e-3, module
        residual = layer.get_base_layer().weight
        torch.testing.assert_close(residual, (W - got).float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        model_logits(model, setup["probe"]), setup["base_logits"], atol=1e-5, rtol=0
    )


def test_corda_without_attrs_is_a_user_error(tiny_llm, setup, monkeypatch):
    from svdlora_cli.errors import SvdloraError

    monkeypatch.setitem(sys.modules, "attr", None)  # import attr -> ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "peft.tuners.lora.corda", raising=False)
    with pytest.raises(SvdloraError, match="'attr'") as error:
        _start(tiny_llm, setup, "corda")
    assert "pip install attrs" in error.value.hint


@pytest.fixture(scope="module")
def trained(tiny_llm, tiny_data, setup, tmp_path_factory):
    """Every baseline arm and random, trained 3 steps on one seed; the trained models' logits."""
    out = tmp_path_factory.mktemp("baselines")
    logits, real_fit = {}, arm_module.fit

    def recording_fit(model, *args, **kwargs):
        result = real_fit(model, *args, **kwargs)
        logits[current] = model_logits(model.eval(), setup["probe"])
        return result

    summaries = {}
    arm_module.fit = recording_fit
    try:
        for current in ("random", *BASELINES):
            summaries[current] = train_student(
                str(tiny_llm),
                current,
                out,
                CONFIG,
                setup["plan"],
                data_path=str(tiny_data[0]),
                eval_path=str(tiny_data[1]),
            )
    finally:
        arm_module.fit = real_fit
    return summaries, logits


def test_every_arm_starts_at_the_base_loss_and_shares_the_batch_order(trained):
    summaries, _ = trained
    orders = {
        init: json.loads(Path(s["artifacts"]["batch_order"]).read_text())
        for init, s in summaries.items()
    }
    assert all(order == orders["random"] for order in orders.values())
    start = summaries["random"]["initial_loss"]  # random: B = 0, the base's loss
    for init in BASELINES:
        assert summaries[init]["initial_loss"] == pytest.approx(start, abs=1e-5), init
        assert summaries[init]["final_loss"] < start, init


@pytest.mark.parametrize("init", BASELINES)
def test_saved_adapters_reload_on_the_plain_base(init, tiny_llm, setup, trained):
    from peft import PeftModel

    summaries, logits = trained
    base = load_model(str(tiny_llm)).eval()
    model = PeftModel.from_pretrained(base, summaries[init]["artifacts"]["adapter"]).eval()
    reloaded = model_logits(model, setup["probe"])
    torch.testing.assert_close(reloaded, logits[init], atol=1e-4, rtol=0)
    assert (reloaded - setup["base_logits"]).abs().max() > 1e-4  # training moved it


def test_cli_trains_the_baseline_arms(tiny_llm, tiny_data, tmp_path):
    doc = invoke_json(
        "train",
        "-b",
        tiny_llm,
        "--train-data",
        tiny_data[0],
        "--init",
        "random,olora,lora-ga,eva",
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
    names = [a["name"] for a in doc["arms"]]
    assert names == ["random", "olora", "lora-ga", "eva"]
    for name in names:
        assert (tmp_path / f"training_log_{name}.csv").is_file()
        assert (tmp_path / f"final_model_{name}" / "adapter_config.json").is_file()
