"""Every adapter `svd` writes is right or refused: module names come from the model that
transformers builds, and each case ends with PEFT logits that match an independent rank-r
merge (numpy SVD of the files' dW) and really change, or with a clean Error + Hint."""

from __future__ import annotations

import json
import logging
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import assert_user_error, build_pair, invoke, invoke_json, planted_delta

RANK = 3


def _edit_weights(folder: Path, edit) -> None:
    """Rewrite a single-file checkpoint's tensors with `edit(dict) -> dict`."""
    tensors = load_file(folder / "model.safetensors")
    save_file(edit(tensors), folder / "model.safetensors", metadata={"format": "pt"})


def _hub_layout(src: Path, dst: Path) -> Path:
    """GPT-2 as openai-community/gpt2 stores it: no `transformer.` prefix, no lm_head (tied)."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (dst / "config.json").write_text(json.dumps(config))
    _edit_weights(
        dst,
        lambda t: {
            k.removeprefix("transformer."): v.contiguous()
            for k, v in t.items()
            if not k.startswith("lm_head")
        },
    )
    return dst


def _planted_copy(base: Path, tuned: Path, seed: int = 1, biases: bool = False) -> Path:
    """`tuned` = `base` plus a planted rank-3 delta on every default target (file keys)."""
    from svdlora_cli.models.targets import is_default_target

    shutil.copytree(base, tuned)
    gen = torch.Generator().manual_seed(seed)

    def plant(tensors):
        for name, value in tensors.items():
            if is_default_target(name, tuple(value.shape)):
                tensors[name] = value + planted_delta(tuple(value.shape), RANK, gen)
            elif biases and name.endswith(".bias"):
                tensors[name] = value + 0.01 * torch.randn(value.shape, generator=gen)
        return tensors

    _edit_weights(tuned, plant)
    return tuned


def _moe_pair(root: Path, kind: str) -> tuple[Path, Path]:
    """A tiny Qwen2-MoE or Mixtral saved with per-expert keys (transformers 5 fuses them)."""
    from transformers import AutoModelForCausalLM, MixtralConfig, Qwen2MoeConfig

    common = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 96,
        "max_position_embeddings": 64,
        "tie_word_embeddings": False,
        "num_experts_per_tok": 2,
    }
    if kind == "qwen2-moe":
        config = Qwen2MoeConfig(
            intermediate_size=64,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=32,
            num_experts=4,
            **common,
        )
    else:
        config = MixtralConfig(intermediate_size=32, num_local_experts=4, **common)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "base")
    return root / "base", _planted_copy(root / "base", root / "tuned")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("verify")
    out = {}
    for arch in ("gpt2", "llama", "qwen2"):
        (root / arch).mkdir()
        pair = build_pair(root / arch, arch)
        out[arch] = (pair.base, pair.tuned)
    gpt2_base, gpt2_tuned = out["gpt2"]
    out["gpt2-hub"] = (
        _hub_layout(gpt2_base, root / "hub" / "base"),
        _hub_layout(gpt2_tuned, root / "hub" / "tuned"),
    )
    qwen_base = out["qwen2"][0]
    out["qwen2-biases"] = (qwen_base, _planted_copy(qwen_base, root / "qb" / "t", biases=True))
    for kind in ("qwen2-moe", "mixtral"):
        (root / kind).mkdir()
        out[kind] = _moe_pair(root / kind, kind)
    return out


def _independent_logits(base: Path, tuned: Path, doc: dict, caplog) -> tuple[torch.Tensor, ...]:
    """(base, PEFT base + adapter, base + numpy rank-r truncation of each module's dW)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.arange(1, 9)[None] % 90
    b, t = load_file(base / "model.safetensors"), load_file(tuned / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    with (
        warnings.catch_warnings(record=True) as caught,
        caplog.at_level(logging.WARNING),
        torch.no_grad(),
    ):
        warnings.simplefilter("always")
        plain = model(ids).logits
        adapted = PeftModel.from_pretrained(model, doc["artifacts"]["adapter"]).eval()(ids).logits
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if re.search(r"(unexpected|missing)[\w ]*keys?", m, re.I)]
    reference = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    params = dict(reference.named_parameters())
    with torch.no_grad():
        for m in doc["modules"]:
            dw = t[m["tensor"]].double().numpy() - b[m["tensor"]].double().numpy()
            u, s, vh = np.linalg.svd(dw, full_matrices=False)  # stored orientation: same rank-r
            r = m["rank"]
            params[f"{m['name']}.weight"] += torch.tensor((u[:, :r] * s[:r]) @ vh[:r]).float()
        merged = reference(ids).logits
    return plain, adapted, merged


@pytest.mark.parametrize(
    "case", ["gpt2", "gpt2-hub", "llama", "qwen2-biases", "qwen2-moe", "mixtral"]
)
def test_svd_adapter_matches_an_independent_merge(pairs, tmp_path, case, caplog):
    base, tuned = pairs[case]
    doc = invoke_json("svd", "-b", base, "-t", tuned, "-r", RANK, "-o", tmp_path, "--no-plot")
    v = doc["verification"]
    assert v["structural"]["ok"] and v["structural"]["modules"] == len(doc["modules"])
    assert v["probe"]["ok"] and v["probe"]["changed"] and v["probe"]["rel_diff"] < 1e-4
    plain, adapted, merged = _independent_logits(base, tuned, doc, caplog)
    scale = float(merged.abs().max())
    assert float((adapted - merged).abs().max()) <= 1e-4 * scale
    assert float((adapted - plain).abs().max()) > 1e-3 * scale  # the adapter does something
    report = Path(doc["artifacts"]["report"]).read_text()
    assert "Verification" in report and "structural" in report


def test_hub_layout_gpt2_gets_the_built_models_module_names(pairs, tmp_path):
    base, tuned = pairs["gpt2-hub"]
    doc = invoke_json("svd", "-b", base, "-t", tuned, "-r", RANK, "-o", tmp_path, "--no-plot")
    assert all(m["name"].startswith("transformer.h.") for m in doc["modules"])
    assert doc["modules"][0]["tensor"].startswith("h.")
    assert doc["coverage"]["renamed"] == len(doc["modules"])
    keys = load_file(Path(doc["artifacts"]["adapter"]) / "adapter_model.safetensors")
    assert all(k.startswith("base_model.model.transformer.h.") for k in keys)


@pytest.mark.parametrize("case", ["qwen2-moe", "mixtral"])
def test_fused_experts_are_left_out_and_reported(pairs, tmp_path, case):
    base, tuned = pairs[case]
    doc = invoke_json("svd", "-b", base, "-t", tuned, "-r", RANK, "-o", tmp_path, "--no-plot")
    fused = doc["coverage"]["fused_experts"]
    assert len(fused) == 2 * 4 * 3  # layers x experts x (gate, up, down) or (w1, w2, w3)
    assert not any(".experts." in m["name"] for m in doc["modules"])
    shared = [m for m in doc["modules"] if "mlp.shared_expert" in m["name"]]
    assert bool(shared) == (case == "qwen2-moe")  # the shared expert is a real MLP
    assert any(f"{len(fused)} expert tensors not covered: fused 3-D" in w for w in doc["warnings"])
    untargeted = {r["name"] for r in doc["untargeted"]}
    assert set(fused) <= untargeted  # in the share a LoRA cannot capture, not the energy


def test_file_named_adapter_is_refused_by_svd(pairs, tmp_path, monkeypatch):
    """Without the name mapping (the old bug) the structural check refuses the adapter."""
    from svdlora_cli.models.module_map import Coverage
    from svdlora_cli.spectra import svd_step as extraction

    monkeypatch.setattr(
        extraction,
        "map_targets",
        lambda folder, t, rest, cache=None, pending=None: (list(t), list(rest), None, Coverage()),
    )
    base, tuned = pairs["gpt2-hub"]
    result = invoke("svd", "-b", base, "-t", tuned, "-r", RANK, "-o", tmp_path / "o")
    assert_user_error(result, "PEFT would drop 8 of the adapter's 8 modules", "h.0.attn.c_attn")
    assert not list((tmp_path / "o").glob("svd_analysis_*.json"))
    assert not list((tmp_path / "o").glob("adapter_*"))


@pytest.mark.parametrize("probe", ["--probe", "--no-probe"])
def test_wrong_scale_is_refused_with_the_module_names(pairs, tmp_path, monkeypatch, probe):
    """Without the probe too (the default from 250M parameters): the delta check compares
    PEFT's reading with the SVD's factors, not with this package's reading of the file,
    which would agree with a wrong alpha."""
    from svdlora_cli.adapters import factors as adapters

    real = adapters.adapter_config

    def doubled(*args, **kwargs):
        config = real(*args, **kwargs)
        return {**config, "lora_alpha": 2 * config["r"]}

    monkeypatch.setattr(adapters, "adapter_config", doubled)
    base, tuned = pairs["llama"]
    result = invoke("svd", "-b", base, "-t", tuned, "-r", RANK, "-o", tmp_path / "o", probe)
    assert_user_error(result, "is not its rank-r delta", "differ: model.layers.0.")


def test_the_logits_probe_is_a_second_line_behind_the_delta_check(pairs, tmp_path, monkeypatch):
    """With the per-module delta check out of the way, the logits probe still refuses."""
    from svdlora_cli.adapters import checks as adapter_check
    from svdlora_cli.adapters import factors as adapters

    real = adapters.adapter_config
    monkeypatch.setattr(
        adapters, "adapter_config", lambda *a, **k: {**real(*a, **k), "lora_alpha": 99.0}
    )
    monkeypatch.setattr(adapter_check, "_delta_check", lambda *a, **k: {"checked": 0})
    base, tuned = pairs["llama"]
    result = invoke("svd", "-b", base, "-t", tuned, "-r", RANK, "-o", tmp_path / "o")
    assert_user_error(result, "differs from the directly merged", "modules: model.layers.0.")


def test_the_delta_check_reads_peft_conventions_like_peft(tmp_path):
    """A PEFT-made adapter with rsLoRA and per-module alpha/rank patterns passes `verify`:
    PEFT's get_delta_weight agrees with this package's reading of the file."""
    from peft import LoraConfig

    from tests.conftest import build_tiny_llm, peft_made_adapter

    base = build_tiny_llm(tmp_path / "base")
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        use_rslora=True,
        target_modules=["q_proj", "v_proj", "down_proj"],
        rank_pattern={"down_proj": 2},
        alpha_pattern={"v_proj": 3.0},
    )
    peft_made_adapter(base, config, tmp_path / "adapter")
    doc = invoke_json("verify", tmp_path / "adapter", "-b", base)
    deltas = doc["structural"]["deltas"]
    assert deltas["checked"] == 6 and deltas["max_rel_diff"] < 1e-6
    assert doc["probe"]["ok"] and doc["probe"]["changed"]


def test_no_verify_skips_the_probe_but_not_the_structure(pairs, tmp_path):
    base, tuned = pairs["llama"]
    doc = invoke_json(
        "svd", "-b", base, "-t", tuned, "-r", RANK, "-o", tmp_path, "--no-plot", "--no-verify"
    )
    assert doc["verification"]["structural"]["ok"]
    assert doc["verification"]["probe"] is None
    assert doc["verification"]["probe_reason"] == "--no-probe"  # the new name of --no-verify


@pytest.mark.parametrize("where", ["teacher", "inside-base", "base-itself"])
def test_output_folder_inside_a_model_folder_is_refused(pairs, where):
    base, tuned = pairs["llama"]
    out = {"teacher": tuned, "inside-base": base / "svd-out", "base-itself": base}[where]
    before = sorted(p.name for p in base.iterdir()), sorted(p.name for p in tuned.iterdir())
    result = invoke("svd", "-b", base, "-t", tuned, "-r", RANK, "-o", out)
    assert_user_error(result, "model folder", "--output-dir outside")
    assert (sorted(p.name for p in base.iterdir()), sorted(p.name for p in tuned.iterdir())) == (
        before
    )


def test_verify_command_refuses_a_file_named_adapter(pairs, tmp_path):
    base, tuned = pairs["gpt2-hub"]
    doc = invoke_json("svd", "-b", base, "-t", tuned, "-r", RANK, "-o", tmp_path, "--no-plot")
    good = Path(doc["artifacts"]["adapter"])
    bad = tmp_path / "file-named"
    shutil.copytree(good, bad)
    _strip = {
        k.replace("base_model.model.transformer.", "base_model.model."): v
        for k, v in load_file(good / "adapter_model.safetensors").items()
    }
    save_file(_strip, bad / "adapter_model.safetensors")
    ok = invoke_json("verify", good, "-b", base)
    assert ok["structural"]["ok"] and ok["probe"]["ok"] and ok["probe"]["changed"]
    result = invoke("verify", bad, "-b", base)
    assert_user_error(result, "PEFT would drop 8", "h.0.attn.c_attn")


def test_verify_command_reports_the_gap_to_the_teacher(tmp_path):
    from tests.conftest import build_tiny_llm, write_rows

    base = build_tiny_llm(tmp_path / "base")
    teacher = _planted_copy(base, tmp_path / "teacher")
    doc = invoke_json("svd", "-b", base, "-t", teacher, "-r", RANK, "-o", tmp_path / "o")
    adapter = doc["artifacts"]["adapter"]
    rows = write_rows(tmp_path / "eval.json", 4)
    out = invoke_json("verify", adapter, "-t", teacher, "--eval-data", rows)  # base from config
    gap = out["gap"]
    assert gap["rows"] == 4 and gap["tokens"] > 0
    assert gap["kl_teacher_adapted"] < gap["kl_teacher_base"]
    assert gap["gap_closed"] > 0.9  # rank 3 keeps ~99% of a planted rank-3 delta
    table = invoke("verify", adapter, "-t", teacher, "--eval-data", rows)
    assert table.exit_code == 0 and "teacher gap" in table.stdout and "closed" in table.stdout


def test_verify_command_needs_an_adapter_folder(tmp_path):
    result = invoke("verify", tmp_path, "-b", tmp_path)
    assert_user_error(result, "not a PEFT adapter folder")


def test_probe_is_off_by_default_from_250m_parameters(pairs, tmp_path, monkeypatch):
    from svdlora_cli.adapters import verify

    monkeypatch.setattr(verify, "parameter_count", lambda folder: 300_000_000)
    base, tuned = pairs["llama"]
    doc = invoke_json("svd", "-b", base, "-t", tuned, "-r", RANK, "-o", tmp_path, "--no-plot")
    assert doc["verification"]["structural"]["ok"] and doc["verification"]["probe"] is None
    assert "off by default from 250M" in doc["verification"]["probe_reason"]
    doc = invoke_json(
        "svd", "-b", base, "-t", tuned, "-r", RANK, "-o", tmp_path, "--no-plot", "--verify"
    )
    assert doc["verification"]["probe"]["ok"]


def test_a_base_whose_config_says_bf16_is_checked_in_fp32(tmp_path):
    """Hub configs name bf16; PEFT keeps adapter weights in fp32, and so does the check
    (loading the fp32 adapter into bf16 LoRA layers would round it past the tolerance)."""
    pair = build_pair(tmp_path, "llama")
    for folder in (pair.base, pair.tuned):
        config = json.loads((folder / "config.json").read_text())
        config.update(dtype="bfloat16", torch_dtype="bfloat16")
        (folder / "config.json").write_text(json.dumps(config))
    doc = invoke_json("svd", "-b", pair.base, "-t", pair.tuned, "-r", RANK, "-o", tmp_path / "o")
    deltas = doc["verification"]["structural"]["deltas"]
    assert deltas["checked"] == len(pair.deltas) and deltas["max_rel_diff"] < 1e-5


def test_the_module_map_is_built_once_per_config_and_keys(pairs, tmp_path, monkeypatch):
    from svdlora_cli.models import module_map
    from svdlora_cli.store.cache import ArtifactCache

    built = []
    real = module_map.build_module_map
    monkeypatch.setattr(module_map, "build_module_map", lambda *a: built.append(1) or real(*a))
    base, _ = pairs["llama"]
    keys = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    cache = ArtifactCache(tmp_path / "cache")
    first = module_map.module_map(base, keys, cache)
    again = module_map.module_map(base, keys, cache)
    assert first == again == real(base, keys) and len(built) == 1
    assert first.modules[keys[0]] == "model.layers.0.self_attn.q_proj"
    module_map.module_map(base, keys[:1], cache)  # other keys: built again
    assert len(built) == 2
    moved = tmp_path / "moved"
    shutil.copytree(base, moved)
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    assert "model.layers.1.mlp.down_proj.weight" in module_map.module_map(moved, keys, cache).absent
    assert len(built) == 3


def test_a_verdict_is_kept_by_the_adapters_bytes_and_a_changed_byte_is_checked_again(
    pairs, tmp_path, monkeypatch
):
    """A warm run that writes the same adapter bytes reuses the passed verdict; an adapter
    with another byte (here a doubled alpha) is checked afresh and still refused."""
    from svdlora_cli.adapters import factors as adapters
    from svdlora_cli.adapters import verify

    checks = []
    real_verify = verify.verify_adapter
    monkeypatch.setattr(
        verify, "verify_adapter", lambda *a, **k: checks.append(1) or real_verify(*a, **k)
    )
    base, tuned = pairs["llama"]
    args = ("svd", "-b", base, "-t", tuned, "-r", RANK, "--no-plot", "--probe")
    first = invoke_json(*args, "-o", tmp_path / "a")
    second = invoke_json(*args, "-o", tmp_path / "b")
    assert len(checks) == 1
    assert first["verification"]["cached"] is False and second["verification"]["cached"]
    for key in ("structural", "probe"):
        assert second["verification"][key] == first["verification"][key]
    # --no-probe is another verdict (the probe setting is part of the key)
    assert (
        invoke_json(*args[:-1], "--no-probe", "-o", tmp_path / "c")["verification"]["cached"]
        is False
    )
    real = adapters.adapter_config
    monkeypatch.setattr(
        adapters, "adapter_config", lambda *a, **k: {**real(*a, **k), "lora_alpha": 2 * int(RANK)}
    )
    result = invoke(*args, "-o", tmp_path / "d")
    assert_user_error(result, "is not its rank-r delta", "differ: model.layers.0.")
