"""Real checkpoints never give a silently wrong dW: stray weight files, mixed dtypes, FP8.

Every figure is checked against an independent torch computation of the planted delta.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import assert_user_error, invoke, invoke_json

TARGET = "model.layers.0.self_attn.q_proj.weight"
BF16_ULP_BELOW_2_POW_5 = 2.0**-13  # bf16 spacing of values in [2^-6, 2^-5)


def _state(hidden: int = 32, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    """A tiny Llama's fp32 state dict and config (one layer)."""
    from transformers import AutoModelForCausalLM

    from svdlora_cli.models.tiny import tiny_config

    config = tiny_config("llama", hidden=hidden, layers=1, vocab=64)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return state, config.to_dict()


def _save(folder: Path, state: dict[str, torch.Tensor], config: dict, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({**config, **extra}))
    return folder


def _targets(state: dict[str, torch.Tensor]) -> list[str]:
    from svdlora_cli.models.targets import is_default_target

    return [n for n, t in state.items() if is_default_target(n, tuple(t.shape))]


def _rank4_on_bf16_grid(shape: tuple[int, int], norm: float, gen: torch.Generator) -> torch.Tensor:
    """An exact rank-4 matrix of whole bf16 steps (2^-13) with Frobenius norm about `norm`.

    Four disjoint +-1 blocks: added to a bf16 value of magnitude in [2^-6, 2^-5), each
    entry stays exactly representable in bf16, so the fine-tune's change survives the save.
    """
    m, n = shape
    side = max(1, round(math.sqrt((norm / BF16_ULP_BELOW_2_POW_5) ** 2 / 4)))
    rows, cols = torch.randperm(m, generator=gen), torch.randperm(n, generator=gen)
    a, b = torch.zeros(m, 4), torch.zeros(n, 4)
    for i in range(4):
        signs = lambda k: torch.randint(0, 2, (k,), generator=gen).float() * 2 - 1  # noqa: E731
        a[rows[i * side : (i + 1) * side], i] = signs(side)
        b[cols[i * side : (i + 1) * side], i] = signs(side)
    return BF16_ULP_BELOW_2_POW_5 * (a @ b.T)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> dict:
    """fp32 base / bf16 teacher and bf16 base / fp32 teacher, each with a planted rank-4 dW
    of relative size ~1e-3 (the bf16 teacher fine-tuned from the base as loaded in bf16)."""
    root = tmp_path_factory.mktemp("mixed")
    state, config = _state()
    gen = torch.Generator().manual_seed(3)
    for name in _targets(state):  # |w| in [2^-6, 2^-5): one bf16 spacing for the whole matrix
        w = state[name]
        state[name] = w.sign() * (0.016 + 0.0145 * torch.rand(w.shape, generator=gen))
    base32 = _save(root / "base-fp32", state, config, dtype="float32")
    teacher16, deltas16 = {}, {}
    for name, w in state.items():
        teacher16[name] = w.to(torch.bfloat16)
        if name in _targets(state):
            deltas16[name] = _rank4_on_bf16_grid(tuple(w.shape), 1e-3 * float(w.norm()), gen)
            moved = teacher16[name].float() + deltas16[name]
            assert torch.equal(moved.to(torch.bfloat16).float(), moved)  # exact in bf16
            teacher16[name] = moved.to(torch.bfloat16)
    t16 = _save(root / "teacher-bf16", teacher16, config, dtype="bfloat16")
    base16 = _save(root / "base-bf16", {k: v.to(torch.bfloat16) for k, v in state.items()}, config)
    teacher32, deltas32 = {}, {}
    for name, w in state.items():
        teacher32[name] = w.to(torch.bfloat16).float()
        if name in _targets(state):
            u = torch.randn(w.shape[0], 4, generator=gen)
            v = torch.randn(4, w.shape[1], generator=gen)
            d = u @ v
            deltas32[name] = d * (1e-3 * float(w.norm()) / float(d.norm()))
            teacher32[name] = teacher32[name] + deltas32[name]
    t32 = _save(root / "teacher-fp32", teacher32, config, dtype="float32")
    return {
        "fp32->bf16": (base32, t16, deltas16),
        "bf16->fp32": (base16, t32, deltas32),
    }


def _energy(doc: dict) -> float:
    return doc["summary"]["total_energy"]


@pytest.mark.parametrize("direction", ["fp32->bf16", "bf16->fp32"])
def test_mixed_precision_default_recovers_planted_rank4(mixed, direction, tmp_path):
    base, teacher, deltas = mixed[direction]
    result = invoke("svd", "-b", base, "-t", teacher, "-r", 4, "-o", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert _energy(doc) > 0.99
    dtypes = doc["dtypes"]
    assert dtypes["policy"] == "round" and dtypes["mixed_targets"] == len(deltas)
    assert sum(dtypes["base"].values()) == sum(dtypes["teacher"].values()) == len(deltas)
    # one warning for the run, with the counts
    warned = [w for w in doc["warnings"] if "dtypes differ" in w]
    assert len(warned) == 1 and f"{len(deltas)} of {len(deltas)} targets" in warned[0]
    assert result.stderr.count("dtypes differ") == 1
    for module in doc["modules"]:  # ||dW|| is the planted one's
        planted = deltas[module["tensor"]]
        assert module["delta_norm"] == pytest.approx(float(planted.norm()), rel=1e-4)
        top = torch.linalg.svdvals(planted.double())[:4]
        assert module["singular_values"][:4] == pytest.approx(top.tolist(), rel=1e-4)
    report = (tmp_path / "svd_report_rank4.txt").read_text()
    assert "dtypes: base" in report and "--dtype-policy round" in report


def test_raw_policy_shows_the_rounding(mixed, tmp_path):
    base, teacher, deltas = mixed["fp32->bf16"]
    args = ("svd", "-b", base, "-t", teacher, "-r", 4, "--cache-dir", tmp_path / "c")
    rounded = invoke_json(*args, "-o", tmp_path / "round")
    raw = invoke_json(*args, "-o", tmp_path / "raw", "--dtype-policy", "raw")
    assert raw["cache"]["hits"] == 0  # the policy is part of the cache key
    share = raw["dtypes"]["rounding_share"]
    assert share == rounded["dtypes"]["rounding_share"]
    # independent: ||round(W_base) - W_base||^2 / ||W_teacher - W_base||^2 over the targets
    b, t = load_file(base / "model.safetensors"), load_file(teacher / "model.safetensors")
    num = sum(
        float((b[n].to(torch.bfloat16).double() - b[n].double()).pow(2).sum()) for n in deltas
    )
    den = sum(float((t[n].double() - b[n].double()).pow(2).sum()) for n in deltas)
    assert share == pytest.approx(num / den, rel=1e-3)
    assert share > 0.3 and _energy(raw) < 0.8 < 0.99 < _energy(rounded)
    assert any("--dtype-policy raw" in w and "dtypes differ" in w for w in raw["warnings"])
    print(f"rank-4 energy: raw {_energy(raw):.4f}, round {_energy(rounded):.4f}; share {share}")


def test_bf16_base_needs_no_rounding(mixed, tmp_path):
    """A bf16 base is exact in fp32: nothing to round, both policies agree, share 0.
    Rounding the teacher instead would erase the fine-tune's sub-bf16 change."""
    base, teacher, deltas = mixed["bf16->fp32"]
    raw = invoke_json(
        "svd", "-b", base, "-t", teacher, "-r", 4, "-o", tmp_path, "--dtype-policy", "raw"
    )
    assert raw["dtypes"]["rounding_share"] == 0.0 and _energy(raw) > 0.99
    assert any("dtypes differ" in w and "0.0%" in w for w in raw["warnings"])
    b, t = load_file(base / "model.safetensors"), load_file(teacher / "model.safetensors")
    kept = removed = 0.0
    for n in deltas:
        wrong = t[n].to(torch.bfloat16).double() - b[n].double()
        s = torch.linalg.svdvals(wrong)
        kept, removed = kept + float((s[:4] ** 2).sum()), removed + float((s**2).sum())
    print(f"rounding the teacher to bf16 would keep rank-4 energy {kept / removed:.4f}")
    assert kept / removed < 0.9


def test_delta_and_layer_report_take_the_policy(mixed, tmp_path):
    base, teacher, deltas = mixed["fp32->bf16"]
    doc = invoke_json("delta", "-b", base, "-t", teacher, "-o", tmp_path / "d")
    for module in doc["modules"]:
        assert module["delta_norm"] == pytest.approx(float(deltas[module["name"]].norm()), rel=1e-4)
    assert doc["dtypes"]["policy"] == "round"
    assert "dtypes: base" in (tmp_path / "d" / "delta_report.txt").read_text()
    raw = invoke_json(
        "delta", "-b", base, "-t", teacher, "-o", tmp_path / "r", "--dtype-policy", "raw"
    )
    assert raw["summary"]["targeted_delta_norm"] > 1.2 * doc["summary"]["targeted_delta_norm"]
    layers = invoke_json("layer-report", "-b", base, "-t", teacher, "-o", tmp_path / "l", "-r", 4)
    assert layers["dtypes"]["policy"] == "round"
    assert min(r["energy"] for r in layers["modules"]) > 0.99
    sweep = invoke_json(
        "sweep",
        "-b",
        base,
        "-t",
        teacher,
        "-o",
        tmp_path / "s",
        "--ranks",
        "4",
        "--dtype-policy",
        "raw",
    )
    assert sweep["dtypes"]["policy"] == "raw" and sweep["ranks"][0]["total_energy"] < 0.8
    bad = invoke("delta", "-b", base, "-t", teacher, "-o", tmp_path / "x", "--dtype-policy", "fp32")
    assert_user_error(bad, "--dtype-policy")


# ---------------------------------------------------------------------------- FP8


def _fp8_teacher(root: Path, layout: str) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """bf16 base and an FP8 teacher (hidden 160: 128-blocks with partial edges); returns the
    dequantized teacher's dW per target, computed here the way transformers dequantizes."""
    state, config = _state(hidden=160, seed=1)
    base = {k: v.to(torch.bfloat16) for k, v in state.items()}
    base_dir = _save(root / "base", base, config, dtype="bfloat16")
    gen = torch.Generator().manual_seed(5)
    teacher, expected = dict(base), {}
    for name in _targets(state):
        w = base[name].float()
        m, n = w.shape
        tuned = w + 0.05 * float(w.norm()) / math.sqrt(m * n) * torch.randn(m, n, generator=gen)
        if layout == "tensor":
            scale = tuned.abs().max() / 448.0
            full = scale.expand(m, n)
            stored = scale.reshape(())
            key = "weight_scale_inv"
        elif layout in ("rows", "compressed"):
            stored = tuned.abs().amax(dim=1, keepdim=True) / 448.0
            full = stored.expand(m, n)
            key = "weight_scale"
        else:
            grid = torch.zeros(math.ceil(m / 128), math.ceil(n / 128))
            for i in range(grid.shape[0]):
                for j in range(grid.shape[1]):
                    block = tuned[i * 128 : (i + 1) * 128, j * 128 : (j + 1) * 128]
                    grid[i, j] = block.abs().max() / 448.0
            stored = grid
            full = grid.repeat_interleave(128, 0)[:m].repeat_interleave(128, 1)[:, :n]
            key = "weight_scale_inv"
        codes = (tuned / full).to(torch.float8_e4m3fn)
        teacher[name] = codes
        teacher[name.removesuffix("weight") + key] = stored.float().contiguous()
        dequantized = (codes.float() * full).to(torch.bfloat16)
        expected[name] = dequantized.float() - w
    qc = {
        "tensor": {
            "quant_method": "fp8",
            "weight_block_size": None,
            "activation_scheme": "dynamic",
        },
        "blocks": {"quant_method": "fp8", "weight_block_size": [128, 128]},
        "rows": {"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0},
        "compressed": {
            "quant_method": "compressed-tensors",
            "format": "float-quantized",
            "config_groups": {
                "group_0": {
                    "weights": {"num_bits": 8, "type": "float", "strategy": "channel"},
                    "targets": ["Linear"],
                }
            },
            "ignore": ["lm_head"],
        },
    }[layout]
    teacher_dir = _save(root / "teacher", teacher, config, dtype="bfloat16", quantization_config=qc)
    return base_dir, teacher_dir, expected


@pytest.mark.parametrize("layout", ["tensor", "blocks", "rows", "compressed"])
def test_fp8_teacher_is_dequantized(tmp_path, layout):
    base, teacher, expected = _fp8_teacher(tmp_path, layout)
    doc = invoke_json("delta", "-b", base, "-t", teacher, "-o", tmp_path / "d")
    assert len(doc["modules"]) == len(expected)
    for module in doc["modules"]:
        assert module["delta_norm"] == pytest.approx(
            float(expected[module["name"]].norm()), rel=1e-5
        )
        codes_only = load_file(teacher / "model.safetensors")[module["name"]].float()
        raw_codes = float(
            (codes_only - load_file(base / "model.safetensors")[module["name"]].float()).norm()
        )
        assert module["delta_norm"] < raw_codes / 10  # the codes would be nonsense
    assert doc["summary"]["untargeted_changed"] == 0  # scales are not changed tensors
    assert not [w for w in doc["warnings"] if "only one model" in w]
    assert doc["dtypes"]["teacher"] == {"F8_E4M3": len(expected)}
    assert doc["dtypes"]["quantized"]["teacher"].startswith(
        {"tensor": "fp8", "blocks": "fp8", "rows": "fbgemm_fp8"}.get(layout, "compressed")
    )
    assert any("FP8-quantized" in w for w in doc["warnings"])
    svd = invoke_json("svd", "-b", base, "-t", teacher, "-r", 4, "-o", tmp_path / "s", "--no-plot")
    for module in svd["modules"]:
        s = torch.linalg.svdvals(expected[module["tensor"]].double())
        assert module["singular_values"][:4] == pytest.approx(s[:4].tolist(), rel=1e-4)
    print(layout, {m["name"]: round(m["delta_norm"], 6) for m in doc["modules"]})


def test_unsupported_quantized_checkpoints_are_refused(tmp_path, llama_pair):
    folder = tmp_path / "bnb"
    shutil.copytree(llama_pair.tuned, folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (folder / "config.json").write_text(json.dumps(config))
    result = invoke("delta", "-b", llama_pair.base, "-t", folder, "-o", tmp_path / "o")
    assert_user_error(result, "bitsandbytes", "quantized codes")

    packed = tmp_path / "int8"
    shutil.copytree(llama_pair.tuned, packed)
    state = load_file(packed / "model.safetensors")
    state[TARGET] = (state[TARGET] * 100).round().clamp(-127, 127).to(torch.int8)
    save_file(state, packed / "model.safetensors")
    result = invoke("svd", "-b", llama_pair.base, "-t", packed, "-r", 2, "-o", tmp_path / "p")
    assert_user_error(result, TARGET, "I8")


# ----------------------------------------------------------------- stray weight files


def test_stray_weight_file_is_ignored_with_a_warning(tmp_path, llama_pair):
    folder = tmp_path / "teacher"
    shutil.copytree(llama_pair.tuned, folder)
    shutil.copy(llama_pair.base / "model.safetensors", folder / "model_prev.safetensors")
    shutil.copy(llama_pair.base / "model.safetensors", folder / "svd_factors_rank4.safetensors")
    clean = invoke_json(
        "delta", "-b", llama_pair.base, "-t", llama_pair.tuned, "-o", tmp_path / "a"
    )
    result = invoke("delta", "-b", llama_pair.base, "-t", folder, "-o", tmp_path / "b", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [m["delta_norm"] for m in doc["modules"]] == [m["delta_norm"] for m in clean["modules"]]
    assert "model_prev.safetensors" in result.stderr
    assert "svd_factors_rank4" not in result.stderr  # our own outputs are never weights
    warned = [w for w in doc["warnings"] if "model_prev.safetensors" in w]
    assert len(warned) == 1 and "transformers would not load" in warned[0]


def test_ambiguous_weight_folders_are_refused(tmp_path, llama_pair):
    folder = tmp_path / "two"
    shutil.copytree(llama_pair.tuned, folder)
    (folder / "model.safetensors").rename(folder / "weights_a.safetensors")
    shutil.copy(llama_pair.base / "model.safetensors", folder / "weights_b.safetensors")
    result = invoke("delta", "-b", llama_pair.base, "-t", folder, "-o", tmp_path / "o")
    assert_user_error(result, "weights_a.safetensors", "ambiguous")

    (folder / "weights_b.safetensors").unlink()  # a single weight file is unambiguous
    assert invoke("delta", "-b", llama_pair.base, "-t", folder, "-o", tmp_path / "p").exit_code == 0

    index = {"metadata": {}, "weight_map": {TARGET: "model-00001-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    result = invoke("delta", "-b", llama_pair.base, "-t", folder, "-o", tmp_path / "q")
    assert_user_error(result, "model-00001-of-00002.safetensors")


def test_an_adapter_folder_is_not_a_model(tmp_path, llama_pair):
    folder = tmp_path / "adapter_rank4"
    folder.mkdir()
    shutil.copy(llama_pair.tuned / "model.safetensors", folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text("{}")
    result = invoke("delta", "-b", llama_pair.base, "-t", folder, "-o", tmp_path / "o")
    assert_user_error(result, "no weights found", "PEFT adapter folder")
