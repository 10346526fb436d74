"""Where a packed LoRA training step's time goes: torch profiler over a few steps, and the
share of it in matrix multiplies against this CPU's measured fp32 GEMM rate.

    python benchmarks/profile_train.py --model smollm2-135m --steps 3 [--minimal]

The step is svdlora's (packed rows, answer-only LM head, loss_sum, backward), or with
--minimal the minimal PEFT loop's (padded rows, `model(**batch).loss`); LoRA rank 16 on
q/k/v/o/gate/up/down, batch 4 of the built-in data, fp32 on the CPU. The matrix-multiply
FLOPs per real token of the two show how much work packing removes.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from torch.profiler import ProfilerActivity, profile

from svdlora_cli.data import (
    TokenizedSet,
    collate,
    load_examples,
    resolve_data_path,
    tokenize_examples,
)
from svdlora_cli.models.loading import load_model, load_tokenizer
from svdlora_cli.models.refs import resolve_model_path
from svdlora_cli.training.loss import loss_sum
from svdlora_cli.training.packing import make_batcher
from svdlora_cli.training.schedule import batch_schedule

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def gemm_rate(m: int = 600, k: int = 576, n: int = 1536, repeats: int = 30) -> float:
    """GFLOP/s of one fp32 GEMM of a typical training shape (tokens x hidden x MLP)."""
    a, w = torch.randn(m, k), torch.randn(n, k)
    for _ in range(3):
        a @ w.T
    start = time.perf_counter()
    for _ in range(repeats):
        a @ w.T
    return 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9


def lora_student(model_ref: str) -> tuple[Any, TokenizedSet, Any]:
    """Tokenizer, the built-in training rows and a rank-16 LoRA model in training mode."""
    folder = str(resolve_model_path(model_ref))
    tokenizer = load_tokenizer(folder)
    data = tokenize_examples(load_examples(resolve_data_path(None)), tokenizer, 512)
    torch.manual_seed(0)
    model = get_peft_model(load_model(folder), LoraConfig(r=16, target_modules=TARGETS))
    model.train()
    return tokenizer, data, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--minimal", action="store_true", help="profile the minimal loop's step")
    args = parser.parse_args()
    tokenizer, data, model = lora_student(args.model)
    batching = make_batcher(
        model, model.base_model.model, data, 0, not args.minimal, 512, lambda b: b
    )
    pad = tokenizer.pad_token_id

    def step_loss(rows: Sequence[int]) -> tuple[torch.Tensor, int]:
        if args.minimal:
            batch = collate(rows, data, pad)
            return model(**batch).loss, int(batch["attention_mask"].sum())
        batch = batching.build(rows, data)
        return loss_sum(model, batch)[0], batch["input_ids"].numel()

    steps = batch_schedule(len(data), 4, 1, 1, 0, args.steps + 1)
    step_loss(steps[0].micro_batches[0])[0].backward()  # warm-up
    tokens = 0
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        start = time.perf_counter()
        for step in steps[1:]:
            loss, real = step_loss(step.micro_batches[0])
            tokens += real
            loss.backward()
            model.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    total = sum(e.self_cpu_time_total for e in events)
    mm = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm"))
    flops = sum(e.flops for e in events if e.key in ("aten::mm", "aten::addmm"))
    rate = gemm_rate()
    print(f"tokens {tokens}, {seconds:.2f} s under the profiler, {tokens / seconds:.1f} tokens/s")
    print(f"matrix multiplies: {mm / total:.0%} of CPU time at {flops / mm / 1e3:.1f} GFLOP/s")
    print(f"matrix-multiply work: {flops / tokens / 1e6:.0f} MFLOP per real token")
    print(f"this CPU's fp32 GEMM rate (600 x 576 x 1536): {rate:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
