"""Default LoRA targets per architecture, regex selection and Conv1D orientation."""

from __future__ import annotations

import pytest

from svdlora_cli.errors import InvalidOptionError
from svdlora_cli.models.checkpoints import open_checkpoint
from svdlora_cli.models.targets import describe, select_targets, untargeted_kind


def _shapes(path):
    ckpt = open_checkpoint(path)
    return {n: t.shape for n, t in ckpt.tensors.items()}, ckpt.model_type


def test_llama_defaults_are_the_seven_projections(llama_pair):
    shapes, model_type = _shapes(llama_pair.base)
    targets, rest = select_targets(shapes, model_type)
    kinds = sorted({t.module_type for t in targets})
    assert kinds == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert len(targets) == 14
    assert {t.group for t in targets if t.module_type in ("q_proj", "o_proj")} == {"attention"}
    assert {t.group for t in targets if t.module_type == "down_proj"} == {"mlp"}
    assert "model.embed_tokens.weight" in rest and "lm_head.weight" in rest


def test_qwen2_biases_are_not_targets(qwen2_pair):
    shapes, model_type = _shapes(qwen2_pair.base)
    targets, rest = select_targets(shapes, model_type)
    assert len(targets) == 14
    assert any(n.endswith("q_proj.bias") for n in rest)
    assert untargeted_kind("model.layers.0.self_attn.q_proj.bias", (32,)) == "bias"


def test_gpt2_conv1d_weights_are_transposed(gpt2_pair):
    shapes, model_type = _shapes(gpt2_pair.base)
    targets, _ = select_targets(shapes, model_type)
    c_attn = next(t for t in targets if t.module_type == "c_attn")
    assert c_attn.transposed and c_attn.shape == (96, 32)  # stored (32, 96) = (in, out)
    assert {t.module_type for t in targets} == {"c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"}
    assert {t.group for t in targets if t.module_type == "attn.c_proj"} == {"attention"}


def test_include_and_exclude_change_the_selection(llama_pair):
    shapes, model_type = _shapes(llama_pair.base)
    targets, _ = select_targets(
        shapes, model_type, include=["q_proj|v_proj"], exclude=[r"layers\.1\."]
    )
    assert [t.module for t in targets] == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.v_proj",
    ]


def test_include_matching_nothing_is_an_error(llama_pair):
    shapes, model_type = _shapes(llama_pair.base)
    with pytest.raises(InvalidOptionError, match="no LoRA target"):
        select_targets(shapes, model_type, include=["nonexistent_proj"])
    with pytest.raises(InvalidOptionError, match="not a valid regex"):
        select_targets(shapes, model_type, include=["("])
    with pytest.raises(InvalidOptionError, match="embedding"):
        select_targets(shapes, model_type, include=["embed_tokens"])


def test_describe_names_and_layers():
    t = describe("model.layers.11.mlp.down_proj.weight", (32, 64), "llama")
    assert (t.module, t.layer, t.shape, t.transposed) == (
        "model.layers.11.mlp.down_proj",
        11,
        (32, 64),
        False,
    )
