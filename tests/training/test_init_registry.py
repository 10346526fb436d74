"""The init registry: every record is consistent, it alone decides the `--init` help and
values, and an init registered from outside trains end to end, then goes away again."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from svdlora_cli.adapters.factors import LowRankFactors
from svdlora_cli.errors import InvalidOptionError
from svdlora_cli.training import init_registry as registry
from svdlora_cli.training.accelerator import make_accelerator
from svdlora_cli.training.config import TrainConfig
from svdlora_cli.training.init_registry import (
    FOCUS_INIT,
    INITS,
    REFERENCE_INIT,
    FromFactors,
    InitMethod,
    get_init,
    init_help,
    init_names,
    parse_inits,
    register_init,
    unregister_init,
)
from tests.conftest import assert_user_error, invoke, invoke_json

RANK = 4
CONFIG = TrainConfig(epochs=1, learning_rate=3e-3, batch_size=4, max_length=64, device="cpu")


@pytest.mark.parametrize("name", list(INITS))
def test_every_record_is_consistent(name):
    method = INITS[name]
    assert method.name == name and registry.problems(method) == []
    # The svd-factor path (FromFactors) serves exactly the inits that need the teacher.
    assert method.needs_teacher == isinstance(method.build, FromFactors)
    if method.needs_data:  # a data builder, and a start that follows the seed's batches
        assert callable(method.build) and not method.seedless
    if method.build is None:  # PEFT builds it from its own init name
        assert method.init_lora_weights is True or isinstance(method.init_lora_weights, str)
    if method.rewrites_base:  # PEFT converts the saved adapter by its init name
        assert isinstance(method.init_lora_weights, str)
    assert method.seedless or not method.costly


BUILT_IN = ("random", "gaussian", "svd", "svd-sqrt", "subspace", "pissa", "olora", "lora-ga")
BUILT_IN += ("eva", "corda")


def _built_in(**flags: bool) -> tuple[str, ...]:
    return tuple(name for name in init_names(**flags) if name in BUILT_IN)


def test_the_built_in_records_keep_the_sets_they_replace():
    assert set(BUILT_IN) <= set(INITS)
    assert _built_in(needs_teacher=True) == ("svd", "svd-sqrt", "subspace")
    assert _built_in(needs_data=True) == ("lora-ga", "eva", "corda")
    assert _built_in(rewrites_base=True) == ("pissa", "olora", "lora-ga", "corda")
    assert _built_in(base_start=True) == ("random", "gaussian", "subspace")
    assert _built_in(seedless=True) == ("svd", "svd-sqrt", "pissa", "olora")
    assert _built_in(costly=True) == ("pissa", "olora")
    assert get_init(REFERENCE_INIT).base_start and get_init(FOCUS_INIT).needs_teacher


def test_an_inconsistent_or_repeated_record_is_refused():
    with pytest.raises(ValueError, match="needs_teacher iff FromFactors"):
        register_init(InitMethod("toy-teacher", "wants factors", needs_teacher=True))
    with pytest.raises(ValueError, match="needs_data needs a builder"):
        register_init(InitMethod("toy-data", "reads rows", needs_data=True))
    with pytest.raises(ValueError, match="already registered"):
        register_init(InitMethod("random", "again"))
    assert "toy-teacher" not in INITS and "toy-data" not in INITS


def _factors(out: int, inp: int, k: int) -> LowRankFactors:
    g = torch.Generator().manual_seed(0)
    U, S, Vh = torch.linalg.svd(torch.randn(out, inp, generator=g), full_matrices=False)
    return LowRankFactors(B=U[:, :k] * S[:k], A=Vh[:k], S=S[:k])


@pytest.mark.parametrize("name", init_names(needs_teacher=True))
def test_the_factor_rules_start_where_their_records_say(name):
    f, scale = _factors(12, 10, 6), 0.5
    B, A = f.B[:, :RANK], f.A[:RANK]
    got_B, got_A = INITS[name].build.rule(B, A, f.S[:RANK], scale)
    if INITS[name].base_start:  # the teacher's directions, no head start
        assert torch.count_nonzero(got_B) == 0
        torch.testing.assert_close(got_A, A)
    else:  # s * B @ A is the teacher's rank-r part
        torch.testing.assert_close(scale * got_B @ got_A, B @ A, atol=1e-5, rtol=1e-5)


def test_a_factor_init_without_factors_is_a_user_error():
    start = registry.InitStart(base=None, peft_config=None, plan=None, seed=0)
    with pytest.raises(InvalidOptionError, match="teacher's factors"):
        get_init(FOCUS_INIT).build(start)


def test_the_help_of_init_is_generated_from_the_records():
    import typer

    from svdlora_cli.cli.app import app

    train = typer.main.get_command(app).commands["train"]
    option = next(p for p in train.params if p.name == "init")
    assert init_help() in option.help
    for method in INITS.values():
        assert f"{method.name}: {method.help}" in option.help
    assert "Need --svd-factors or --teacher-model: svd, svd-sqrt, subspace." in option.help


def test_an_unknown_init_is_refused_with_the_registered_names(tiny_llm):
    with pytest.raises(InvalidOptionError) as error:
        parse_inits("random,nope")
    assert error.value.message == "unknown --init nope"
    assert error.value.hint == f"use one or more of: {', '.join(INITS)}"
    result = invoke("train", "-b", tiny_llm, "--init", "svd,nope", "--device", "cpu")
    assert_user_error(result, "unknown --init nope", ", ".join(INITS))


def _half_a(start: registry.InitStart):
    """PEFT's default LoRA (kaiming A, B = 0), then A halved: still the base at step 0."""
    from peft import get_peft_model

    model = get_peft_model(start.base, start.peft_config)
    with torch.no_grad():
        for module in start.plan.ranks:
            model.base_model.model.get_submodule(module).lora_A["default"].weight.mul_(0.5)
    return model


@pytest.fixture
def toy_init():
    """A toy init, registered for one test and unregistered after it."""
    method = register_init(InitMethod("toy-half-a", "kaiming A halved, B = 0", build=_half_a))
    try:
        yield method
    finally:
        unregister_init(method.name)


def test_a_registered_init_trains_end_to_end(toy_init, tiny_llm, tiny_data, tmp_path):
    from svdlora_cli.data import prepare_data
    from svdlora_cli.models.loading import load_model, load_tokenizer
    from svdlora_cli.training.student import base_plan, build_student, train_student

    assert parse_inits("random,toy-half-a") == ["random", "toy-half-a"]
    plan = base_plan(str(tiny_llm), RANK, None)
    tokenizer = load_tokenizer(str(tiny_llm))
    data = prepare_data(tokenizer, str(tiny_data[0]), None, CONFIG.max_length)
    starts = {
        init: build_student(
            load_model(str(tiny_llm)),
            plan,
            init,
            CONFIG,
            0.0,
            data.train,
            tokenizer.pad_token_id,
            make_accelerator("cpu", "no"),
        )
        for init in ("random", "toy-half-a")
    }
    for module in plan.ranks:  # the same seed's kaiming draw, halved by the toy's builder
        random, toy = (starts[i].base_model.model.get_submodule(module) for i in starts)
        torch.testing.assert_close(
            toy.lora_A["default"].weight, 0.5 * random.lora_A["default"].weight
        )
    summary = train_student(
        str(tiny_llm),
        "toy-half-a",
        tmp_path / "api",
        dataclasses.replace(CONFIG, max_steps=2),
        plan,
        data_path=str(tiny_data[0]),
    )
    assert summary["init"] == "toy-half-a" and summary["steps"] == 2
    assert (tmp_path / "api" / "final_model_toy-half-a" / "adapter_config.json").is_file()
    doc = invoke_json(
        "train", "-b", tiny_llm, "--train-data", tiny_data[0], "--init", "toy-half-a",
        "--rank", RANK, "--max-steps", 2, "--batch-size", 4, "--max-length", 64,
        "--device", "cpu", "-o", tmp_path / "cli",
    )  # fmt: skip
    assert [a["name"] for a in doc["arms"]] == ["toy-half-a"]


def test_an_unregistered_init_is_unknown_again():
    method = register_init(InitMethod("toy-gone", "registered, then taken out", build=_half_a))
    assert parse_inits("toy-gone") == ["toy-gone"]
    assert unregister_init("toy-gone") is method
    with pytest.raises(InvalidOptionError, match="unknown --init toy-gone"):
        get_init("toy-gone")
    assert "toy-half-a" not in INITS  # the fixture took its toy out after its test
