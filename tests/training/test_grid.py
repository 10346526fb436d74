"""`train --learning-rates` with `--seeds`: one run per (init, lr, seed), same batches per seed."""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path

from tests.conftest import invoke_json

FAST = ["--max-steps", "2", "--batch-size", "4", "--max-length", "64", "--device", "cpu"]


def test_the_grid_runs_every_cell_on_the_same_batches_per_seed(tiny_llm, tiny_data, tmp_path):
    train, evaluation = (str(p) for p in tiny_data)
    out = tmp_path / "grid"
    doc = invoke_json(
        "train",
        "--base-model",
        tiny_llm,
        "--train-data",
        train,
        "--eval-data",
        evaluation,
        "--init",
        "random,gaussian",
        "--learning-rates",
        "1e-3,3e-3",
        "--seeds",
        "0,1",
        "--eval-limit",
        "4",
        "-o",
        out,
        *FAST,
    )
    expected = {
        f"{init}_lr{lr}_seed{seed}"
        for init, lr, seed in product(("random", "gaussian"), ("0.001", "0.003"), (0, 1))
    }
    assert {a["name"] for a in doc["arms"]} == expected
    assert doc["grid"] == {
        "inits": ["random", "gaussian"],
        "learning_rates": [1e-3, 3e-3],
        "seeds": [0, 1],
    }
    for name in expected:
        record = json.loads((out / f"final_model_{name}" / "svdlora_run.json").read_text())
        assert f"_lr{record['learning_rate']:g}_seed{record['seed']}" in name
    for seed in (0, 1):
        orders = {
            (out / f"batch_order_{name}.json").read_text()
            for name in expected
            if name.endswith(f"seed{seed}")
        }
        assert len(orders) == 1  # every init and learning rate saw the same batches
    orders = [
        json.loads((out / f"batch_order_random_lr0.001_seed{s}.json").read_text()) for s in (0, 1)
    ]
    assert orders[0]["steps"] != orders[1]["steps"]  # and the seed does change them

    comparison = invoke_json("compare", str(out))
    grid = comparison["protocol"]["grid"]
    assert set(grid) == {"random", "gaussian"}
    assert all(len(entry["cells"]) == 2 and entry["chosen"] for entry in grid.values())
    assert comparison["protocol"]["budgets"]["equal"]
    assert Path(comparison["artifacts"]["lr_sensitivity"]).is_file()


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _grid_options(tiny_llm, tiny_data, inits, rates, out, seeds=(0,), **more):
    """A `train` grid on the tiny model: 2 steps per run, 4 eval rows."""
    from svdlora_cli.training.config import TrainConfig
    from svdlora_cli.workflows import train

    train_file, eval_file = (str(p) for p in tiny_data)
    return train.TrainOptions(
        base_model=str(tiny_llm),
        config=TrainConfig(max_steps=2, batch_size=4, max_length=64, device="cpu", eval_limit=4),
        inits=inits,
        learning_rates=rates,
        seeds=seeds,
        train_data=train_file,
        eval_data=eval_file,
        output_dir=out,
        **more,
    )


def test_a_grid_loads_its_base_once_and_starts_every_run_from_the_weights_on_disk(
    tiny_llm, tiny_data, tmp_path, monkeypatch
):
    """pissa rewrites base weights (W - s B0 A0); the runs after it must still start from
    the base on disk, bit for bit, and end exactly where a run of their own would."""
    import torch
    from safetensors.torch import load_file

    from svdlora_cli.models.loading import load_model
    from svdlora_cli.training import loop
    from svdlora_cli.training.shared import SharedSetup
    from svdlora_cli.workflows import train

    on_disk = _weights(load_model(str(tiny_llm)))
    starts: list[dict] = []
    take = SharedSetup.take

    def recording_take(self, dtype, rewritten=()):
        model = take(self, dtype, rewritten)
        starts.append(_weights(model))
        return model

    losses = []
    mean_loss = loop.mean_loss

    def counting_mean_loss(*args, **kwargs):
        losses.append(1)
        return mean_loss(*args, **kwargs)

    from peft.tuners.lora.layer import LoraLayer

    svds = []
    pissa_init = LoraLayer.pissa_init

    def counting_pissa_init(self, *args, **kwargs):
        svds.append(1)
        return pissa_init(self, *args, **kwargs)

    monkeypatch.setattr(LoraLayer, "pissa_init", counting_pissa_init)
    from svdlora_cli.training import packing

    checks = []
    check_kernels = packing._check_kernels

    def counting_check(*args, **kwargs):
        checks.append(1)
        return check_kernels(*args, **kwargs)

    monkeypatch.setattr(packing, "_check_kernels", counting_check)
    monkeypatch.setattr(SharedSetup, "take", recording_take)
    monkeypatch.setattr(loop, "mean_loss", counting_mean_loss)

    def options(inits, rates, out, seeds=(0,)):
        return _grid_options(tiny_llm, tiny_data, inits, rates, out, seeds)

    doc = train.run(options(("pissa", "random"), (1e-3, 3e-3), tmp_path / "grid"))
    assert doc["base_loads"] == 1
    targets = len(doc["plan"]["ranks"])
    assert len(svds) == targets  # pissa's SVDs ran for the first pissa run only
    assert len(checks) == 1  # the packed-against-padded check, once per base
    assert {a["attention"] for a in doc["arms"]} == {"packed/sdpa_rows"}
    assert len(starts) == 4
    for weights in starts:
        assert weights.keys() == on_disk.keys()
        assert all(torch.equal(weights[k], on_disk[k]) for k in on_disk)
    # Row 0 (train loss on the first batch, eval loss) is computed once per identical start:
    # two inits x (initial + eval), then only the final eval of each of the four runs.
    assert len(losses) == 2 * 2 + 4
    # B = 0 inits start at the base whatever their seed: one eval loss for all four runs,
    # one first-batch loss per seed (the seed picks the batch).
    losses.clear()
    zero = train.run(options(("random", "gaussian"), (1e-3,), tmp_path / "zero", seeds=(0, 1)))
    assert len(losses) == 1 + 2 + 4
    assert len({a["initial_eval_loss"] for a in zero["arms"]}) == 1
    assert len({(a["seed"], a["initial_loss"]) for a in zero["arms"]}) == 2
    # Each arm of the first grid against a run of its own (a fresh process's setup): the
    # random run after pissa, and pissa from the init the first pissa run left behind.
    grid_arms = {a["name"]: a for a in doc["arms"]}
    for init in ("pissa", "random"):
        out = tmp_path / f"alone_{init}"
        (arm,) = train.run(options((init,), (3e-3,), out))["arms"]
        name = f"{init}_lr0.003"
        log_grid = (tmp_path / "grid" / f"training_log_{name}.csv").read_text().splitlines()
        log_alone = (out / f"training_log_{init}.csv").read_text().splitlines()
        # Same losses, tokens, norms and FLOPs; elapsed seconds (8th column) differ.
        grid_cells, alone_cells = ([r.split(",") for r in log] for log in (log_grid, log_alone))
        assert [c[:7] + c[8:] for c in grid_cells] == [c[:7] + c[8:] for c in alone_cells]
        assert grid_arms[name]["final_eval_loss"] == arm["final_eval_loss"]
        a = load_file(tmp_path / "grid" / f"final_model_{name}" / "adapter_model.safetensors")
        b = load_file(out / f"final_model_{init}" / "adapter_model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_steps_sized_by_tokens_are_the_same_for_every_arm(tiny_llm, tiny_data, tmp_path):
    """`--tokens-per-step`: each step holds rows in the seed's order up to about N real
    tokens; two inits see the same steps, recorded in their batch orders."""
    from svdlora_cli.data import load_examples, tokenize_examples
    from svdlora_cli.models.loading import load_tokenizer
    from svdlora_cli.training.schedule import token_schedule

    train_file, eval_file = (str(p) for p in tiny_data)
    out = tmp_path / "tokens"
    doc = invoke_json(
        "train",
        "--base-model",
        tiny_llm,
        "--train-data",
        train_file,
        "--eval-data",
        eval_file,
        "--init",
        "random,gaussian",
        "--tokens-per-step",
        "200",
        "--grad-accum",
        "2",
        "-o",
        out,
        *[a for a in FAST if a not in ("--batch-size", "4")],
    )
    orders = [json.loads((out / f"batch_order_{a['name']}.json").read_text()) for a in doc["arms"]]
    assert orders[0] == orders[1]
    data = tokenize_examples(load_examples(tiny_data[0]), load_tokenizer(str(tiny_llm)), 64)
    expected = token_schedule([len(r) for r in data.input_ids], 200, 2, 5, 0, max_steps=2)
    assert orders[0]["steps"] == [[list(m) for m in s.micro_batches] for s in expected]
    assert doc["config"]["tokens_per_step"] == 200
    assert all(a["tokens"] >= 2 * 200 for a in doc["arms"])  # each step reached its budget


def test_data_driven_starts_are_computed_once_per_seed_and_equal_a_run_of_their_own(
    tiny_llm, tiny_data, tmp_path, monkeypatch
):
    """lora-one and lora-ga read the seed's init rows: one gradient pass per seed serves
    every learning rate, only one seed's starts are held at a time, and the second rate's
    run ends exactly where a run of its own does (dropout on: its draws start from the seed)."""
    import torch
    from safetensors.torch import load_file

    from svdlora_cli.training import data_inits, lora_one
    from svdlora_cli.training.shared import SharedSetup
    from svdlora_cli.workflows import train

    built: list[str] = []
    for module, name in ((lora_one, "lora_one_model"), (data_inits, "lora_ga_model")):
        real = getattr(module, name)
        monkeypatch.setattr(
            module, name, lambda start, real=real, name=name: built.append(name) or real(start)
        )
    held: list[int] = []
    remember = SharedSetup.remember_init

    def counting_remember(self, *args, **kwargs):
        remember(self, *args, **kwargs)
        held.append(len(self.inits))

    monkeypatch.setattr(SharedSetup, "remember_init", counting_remember)

    def options(inits, rates, out, seeds=(0,)):
        return _grid_options(
            tiny_llm, tiny_data, inits, rates, out, seeds, rank=4, lora_dropout=0.1
        )

    train.run(options(("lora-one", "lora-ga"), (1e-3, 3e-3), tmp_path / "grid", (0, 1)))
    # one build per init and seed, not per learning rate
    assert sorted(built) == sorted(["lora_one_model", "lora_ga_model"] * 2)
    assert max(held) == 2  # the two inits of one seed; seed 0's starts go when seed 1 comes
    for init in ("lora-one", "lora-ga"):
        out = tmp_path / f"alone_{init}"
        train.run(options((init,), (3e-3,), out, (1,)))
        name = f"{init}_lr0.003_seed1"
        grid_rows = (tmp_path / "grid" / f"training_log_{name}.csv").read_text().splitlines()
        alone_rows = (out / f"training_log_{init}.csv").read_text().splitlines()
        # Same losses, tokens, norms and FLOPs; elapsed seconds (8th column) differ.
        cells = [[r.split(",") for r in rows] for rows in (grid_rows, alone_rows)]
        assert [c[:7] + c[8:] for c in cells[0]] == [c[:7] + c[8:] for c in cells[1]]
        a = load_file(tmp_path / "grid" / f"final_model_{name}" / "adapter_model.safetensors")
        b = load_file(out / f"final_model_{init}" / "adapter_model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
