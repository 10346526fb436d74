"""Teacher SFT and LoRA students on a tiny Llama: start losses, batch order, reloading."""

from __future__ import annotations

import itertools
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from svdlora_cli.data import collate, load_examples, tokenize_examples
from svdlora_cli.models.targets import is_default_target
from svdlora_cli.store.cache import ArtifactCache
from svdlora_cli.training.config import TrainConfig
from svdlora_cli.training.schedule import batch_schedule
from svdlora_cli.training.steplog import read_step_log
from svdlora_cli.training.student import base_plan, svd_factors_for, train_student
from svdlora_cli.training.teacher import train_teacher

CONFIG = TrainConfig(epochs=3, learning_rate=3e-3, batch_size=4, max_length=64, device="cpu")
TEACHER = TrainConfig(epochs=8, learning_rate=1e-2, batch_size=4, max_length=64, device="cpu")


@pytest.fixture(scope="module")
def teacher(tiny_llm, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    summary = train_teacher(str(tiny_llm), out, TEACHER, str(tiny_data[0]), str(tiny_data[1]))
    return out, summary


@pytest.fixture(scope="module")
def targets_only_teacher(tiny_llm, teacher, tmp_path_factory):
    """The SFT teacher with every non-target tensor reset to the base: dW lives on targets only."""
    folder = tmp_path_factory.mktemp("targets_only") / "model"
    shutil.copytree(teacher[0] / "final_model", folder)
    base = load_file(tiny_llm / "model.safetensors")
    tuned = load_file(folder / "model.safetensors")
    mixed = {
        n: (t if is_default_target(n, tuple(t.shape)) else base[n].float())
        for n, t in tuned.items()
    }
    save_file(mixed, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def _first_batch_loss(model_dir, data_file, config=CONFIG) -> float:
    """Independent loss on the first step's batch: plain HF forward with labels."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    data = tokenize_examples(load_examples(data_file), tok, config.max_length)
    step = batch_schedule(len(data), config.batch_size, 1, 1, config.seed)[0]
    batch = collate(step.micro_batches[0], data, tok.pad_token_id)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return float(model(**batch).loss)


def test_teacher_sft_lowers_the_loss_and_saves_a_model(teacher, tiny_llm, tiny_data):
    out, summary = teacher
    rows = read_step_log(out / "training_log_teacher.csv")
    assert rows[0].step == 0 and rows[0].lr is None and rows[0].eval_loss is not None
    assert rows[-1].loss < rows[0].loss * 0.8, (rows[0].loss, rows[-1].loss)
    assert summary["final_eval_loss"] < summary["initial_eval_loss"]
    assert len(rows) == 1 + 8 * 3  # 12 rows / batch 4 = 3 steps per epoch
    # Tokens seen: the non-padding tokens of each step's rows, counted independently.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llm)
    data = tokenize_examples(load_examples(tiny_data[0]), tok, TEACHER.max_length)
    steps = batch_schedule(len(data), 4, 1, 8, 0)
    per_step = [sum(len(data.input_ids[i]) for mb in st.micro_batches for i in mb) for st in steps]
    assert [r.tokens for r in rows] == [0, *itertools.accumulate(per_step)]
    elapsed = [r.elapsed_s for r in rows]  # cumulative seconds since training started
    assert elapsed[0] == 0.0 and elapsed == sorted(elapsed) and elapsed[-1] > 0
    final = out / "final_model"
    assert (final / "model.safetensors").exists() and (final / "tokenizer.json").exists()
    assert summary["initial_loss"] == pytest.approx(
        _first_batch_loss(tiny_llm, teacher_data(out)), abs=1e-5
    )


def _read(path):
    with open(path) as handle:
        return json.load(handle)


def teacher_data(out):
    return json.loads((out / "final_model" / "svdlora_run.json").read_text())["train_data"]


@pytest.mark.parametrize("init", ["random", "subspace", "gaussian"])
def test_zero_product_inits_start_at_the_base_loss(
    init, tiny_llm, tiny_data, targets_only_teacher, tmp_path
):
    base_loss = _first_batch_loss(tiny_llm, tiny_data[0])
    factors = svd_factors_for(
        str(tiny_llm), 4, ArtifactCache(None), teacher_model=str(targets_only_teacher)
    )
    plan = base_plan(str(tiny_llm), 4, None, factors=factors)
    config = TrainConfig(**{**CONFIG.to_dict(), "max_steps": 2})
    summary = train_student(
        str(tiny_llm), init, tmp_path, config, plan, factors, data_path=str(tiny_data[0])
    )
    # B = 0 in all three, so the student is exactly the base model at step 0.
    assert summary["initial_loss"] == pytest.approx(base_loss, abs=1e-6)


def test_svd_full_rank_starts_at_the_teacher_and_rank_r_in_between(
    tiny_llm, tiny_data, targets_only_teacher, tmp_path
):
    base_loss = _first_batch_loss(tiny_llm, tiny_data[0])
    teacher_loss = _first_batch_loss(targets_only_teacher, tiny_data[0])
    assert teacher_loss < base_loss - 0.05
    config = TrainConfig(**{**CONFIG.to_dict(), "max_steps": 1})
    cache = ArtifactCache(tmp_path / "cache")
    starts = {}
    for rank in (32, 2):
        factors = svd_factors_for(
            str(tiny_llm), rank, cache, teacher_model=str(targets_only_teacher)
        )
        plan = base_plan(str(tiny_llm), rank, None, factors=factors)
        for init in ("svd", "svd-sqrt"):
            summary = train_student(
                str(tiny_llm),
                init,
                tmp_path / f"r{rank}",
                config,
                plan,
                factors,
                name=f"{init}_r{rank}",
                data_path=str(tiny_data[0]),
            )
            starts[(init, rank)] = summary["initial_loss"]
    assert starts[("svd", 32)] == pytest.approx(teacher_loss, abs=1e-4)
    assert starts[("svd-sqrt", 32)] == pytest.approx(teacher_loss, abs=1e-4)
    assert teacher_loss < starts[("svd", 2)] < base_loss
    assert starts[("svd-sqrt", 2)] == pytest.approx(starts[("svd", 2)], abs=1e-5)


def test_batch_order_is_identical_across_inits(tiny_llm, tiny_data, targets_only_teacher, tmp_path):
    factors = svd_factors_for(
        str(tiny_llm), 4, ArtifactCache(None), teacher_model=str(targets_only_teacher)
    )
    plan = base_plan(str(tiny_llm), 4, None, factors=factors)
    config = TrainConfig(**{**CONFIG.to_dict(), "epochs": 2})
    orders = {}
    for init in ("random", "svd", "pissa"):
        summary = train_student(
            str(tiny_llm), init, tmp_path, config, plan, factors, data_path=str(tiny_data[0])
        )
        orders[init] = _read(summary["artifacts"]["batch_order"])["steps"]
    assert orders["random"] == orders["svd"] == orders["pissa"]
    assert len(orders["random"]) == 6
    other = train_student(
        str(tiny_llm),
        "random",
        tmp_path / "s1",
        TrainConfig(**{**config.to_dict(), "seed": 1}),
        plan,
        data_path=str(tiny_data[0]),
    )
    assert _read(other["artifacts"]["batch_order"])["steps"] != orders["random"]


@pytest.mark.parametrize("init", ["svd", "pissa", "random"])
def test_trained_adapters_reload_with_peft(
    init, tiny_llm, tiny_data, targets_only_teacher, tmp_path
):
    """The saved adapter on the untouched base reproduces the trained model's final eval loss."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    factors = svd_factors_for(
        str(tiny_llm), 4, ArtifactCache(None), teacher_model=str(targets_only_teacher)
    )
    plan = base_plan(str(tiny_llm), 4, None, factors=factors)
    config = TrainConfig(**{**CONFIG.to_dict(), "max_steps": 3})
    summary = train_student(
        str(tiny_llm),
        init,
        tmp_path,
        config,
        plan,
        factors,
        data_path=str(tiny_data[0]),
        eval_path=str(tiny_data[1]),
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_llm, dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, summary["artifacts"]["adapter"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llm)
    data = tokenize_examples(load_examples(tiny_data[1]), tok, CONFIG.max_length)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data), CONFIG.batch_size):
            batch = collate(
                list(range(start, min(start + CONFIG.batch_size, len(data)))),
                data,
                tok.pad_token_id,
            )
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * n
            count += n
    assert total / count == pytest.approx(summary["final_eval_loss"], abs=1e-5)
    assert summary["final_eval_loss"] != pytest.approx(summary["initial_eval_loss"], abs=1e-4)
    assert read_step_log(summary["artifacts"]["log"])[-1].step == 3


def test_finished_runs_are_reused_only_when_inputs_match(tiny_llm, tiny_data, tmp_path):
    memo: dict[str, str] = {}
    config = TrainConfig(**{**CONFIG.to_dict(), "max_steps": 2})
    first = train_teacher(str(tiny_llm), tmp_path, config, str(tiny_data[0]), reuse=True, memo=memo)
    again = train_teacher(str(tiny_llm), tmp_path, config, str(tiny_data[0]), reuse=True, memo=memo)
    assert "reused" not in first and again["reused"] and again["final_loss"] == first["final_loss"]
    changed = TrainConfig(**{**config.to_dict(), "learning_rate": 1e-3})
    assert "reused" not in train_teacher(
        str(tiny_llm), tmp_path, changed, str(tiny_data[0]), reuse=True, memo=memo
    )
    factors = svd_factors_for(
        str(tiny_llm), 2, ArtifactCache(None), teacher_model=str(tmp_path / "final_model")
    )
    plan = base_plan(str(tiny_llm), 2, None, factors=factors)
    kwargs = {"data_path": str(tiny_data[0]), "reuse": True, "memo": memo}
    train_student(str(tiny_llm), "svd", tmp_path, config, plan, factors, **kwargs)
    assert train_student(str(tiny_llm), "svd", tmp_path, config, plan, factors, **kwargs)["reused"]
    scaled = {m: type(f)(B=2 * f.B, A=f.A, S=2 * f.S) for m, f in factors.items()}
    assert "reused" not in train_student(
        str(tiny_llm), "svd", tmp_path, config, plan, scaled, **kwargs
    )


def test_a_bf16_student_keeps_its_base_in_bf16_and_what_it_trains_in_fp32(
    tiny_llm, tiny_data, tmp_path, monkeypatch
):
    """Mixed precision as GPU users expect it: the frozen base is stored in bf16 (nothing
    casts it at every step), the LoRA weights and AdamW moments stay fp32."""
    from svdlora_cli.training import loop
    from svdlora_cli.training.shared import SharedSetup

    optimizers = []
    make_optimizer = loop.make_optimizer

    def spy(params, config, device):
        optimizers.append(make_optimizer(params, config, device))
        return optimizers[-1]

    monkeypatch.setattr(loop, "make_optimizer", spy)
    shared = SharedSetup(str(tiny_llm))
    config = TrainConfig(max_steps=2, batch_size=4, max_length=64, device="cpu", precision="bf16")
    plan = base_plan(str(tiny_llm), 4, None)
    summary = train_student(
        str(tiny_llm), "random", tmp_path, config, plan, data_path=str(tiny_data[0]), shared=shared
    )
    base = shared.take(torch.bfloat16)
    assert shared.loads == 1
    assert {p.dtype for p in base.parameters()} == {torch.bfloat16}
    (optimizer,) = optimizers
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert params and {p.dtype for p in params} == {torch.float32}
    assert {s["exp_avg"].dtype for s in optimizer.state.values()} == {torch.float32}
    adapter = load_file(tmp_path / "final_model_random" / "adapter_model.safetensors")
    assert {t.dtype for t in adapter.values()} == {torch.float32}
    assert summary["attention"] == "packed/sdpa_rows"
    assert summary["flops_per_token"] > 0 and summary["mfu"] > 0


def test_a_bf16_teacher_keeps_fp32_master_weights(tiny_llm, tiny_data, tmp_path):
    """Mixed precision for the full SFT: products under bf16 autocast, weights and the
    saved teacher in fp32 (rounding W + dW to bf16 would bury a small dW)."""
    from svdlora_cli.training.records import throughput_line

    config = TrainConfig(max_steps=2, batch_size=4, max_length=64, device="cpu", precision="bf16")
    summary = train_teacher(str(tiny_llm), tmp_path, config, str(tiny_data[0]), str(tiny_data[1]))
    saved = load_file(tmp_path / "final_model" / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}
    assert summary["attention"] == "packed/sdpa_rows"
    assert summary["flops_per_token"] > 0 and summary["mfu"] > 0
    line = throughput_line(summary)
    assert line.startswith("teacher: ") and "MFU" in line and summary["peak_source"] in line
    assert throughput_line({**summary, "reused": True}).endswith("same inputs)")


def test_run_records_carry_what_makes_runs_comparable(teacher, tiny_llm, tiny_data):
    """compare pools runs by these fields: the base's weights and the data files' bytes."""
    import hashlib

    from svdlora_cli.models.checkpoints import fingerprint, open_checkpoint

    record = json.loads((teacher[0] / "final_model" / "svdlora_run.json").read_text())
    assert record["base_fingerprint"] == fingerprint(open_checkpoint(str(tiny_llm)))
    for key, path in (("train_data_sha256", tiny_data[0]), ("eval_data_sha256", tiny_data[1])):
        assert record[key] == hashlib.sha256(path.read_bytes()).hexdigest()
