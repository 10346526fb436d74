"""Training steps side by side in one process: the minimal PEFT step against svdlora's.

    python benchmarks/bench_train_steps.py --model smollm2-135m --steps 20

One model (LoRA rank 16 on q/k/v/o/gate/up/down, fp32), one batch schedule (svdlora's,
batch 4 of the built-in data). For every step both ways run on the same rows, in
alternating order, so a noisy neighbour slows both alike:
- minimal: padded to the longest row, `model(**batch).loss`, torch's default AdamW;
- svdlora: `fit`'s step, packed rows (`packing.pack`), `loss_sum` at answer positions,
  fused AdamW.
Both clip gradients at 1.0. Tokens are real (non-padding) tokens. The ratio is the
summed real tokens over the summed seconds of each way; per-step ratios give a spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from profile_train import lora_student  # this folder: python puts it first on sys.path

from svdlora_cli.data import collate
from svdlora_cli.training.config import TrainConfig
from svdlora_cli.training.loop import make_optimizer, real_tokens
from svdlora_cli.training.loss import loss_sum
from svdlora_cli.training.packing import ATTENTION, make_batcher
from svdlora_cli.training.schedule import batch_schedule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", type=str)
    args = parser.parse_args()
    tokenizer, data, model = lora_student(args.model)
    params = [p for p in model.parameters() if p.requires_grad]
    plain = torch.optim.AdamW(params, lr=1e-5)
    fused = make_optimizer(params, TrainConfig(learning_rate=1e-5), torch.device("cpu"))
    inner = model.base_model.model
    packed = make_batcher(model, inner, data, 0, True, 512, lambda b: b)
    pad = tokenizer.pad_token_id

    def minimal(rows: list[int]) -> int:
        packed.restore()  # transformers' own attention for the padded batch
        batch = collate(rows, data, pad)
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        plain.step()
        plain.zero_grad(set_to_none=True)
        return real_tokens(batch)

    def svdlora(rows: list[int]) -> int:
        inner.set_attn_implementation(ATTENTION)
        batch = packed.build(rows, data)
        summed, count = loss_sum(model, batch)
        (summed / count).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        fused.step()
        fused.zero_grad(set_to_none=True)
        return real_tokens(batch)

    ways = {"minimal": minimal, "svdlora": svdlora}
    schedule = batch_schedule(len(data), 4, 1, 10, 0, args.steps + 1)
    for way in ways.values():  # warm-up on the first step's rows, untimed
        way(list(schedule[0].micro_batches[0]))
    seconds = {name: [] for name in ways}
    tokens = {name: [] for name in ways}
    for number, step in enumerate(schedule[1:]):
        rows = list(step.micro_batches[0])
        order = list(ways) if number % 2 == 0 else list(reversed(ways))
        for name in order:
            start = time.perf_counter()
            tokens[name].append(ways[name](rows))
            seconds[name].append(time.perf_counter() - start)
    speed = {name: sum(tokens[name]) / sum(seconds[name]) for name in ways}
    per_step = [m / s for m, s in zip(seconds["minimal"], seconds["svdlora"], strict=True)]
    figures = {
        "model": args.model,
        "steps": args.steps,
        "minimal_tokens_per_s": round(speed["minimal"], 1),
        "svdlora_tokens_per_s": round(speed["svdlora"], 1),
        "ratio": round(speed["svdlora"] / speed["minimal"], 3),
        "per_step_ratio_median": round(statistics.median(per_step), 3),
        "per_step_ratio_min": round(min(per_step), 3),
        "per_step_ratio_max": round(max(per_step), 3),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            handle.write(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
