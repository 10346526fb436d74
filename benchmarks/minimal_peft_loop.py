"""The reference: a minimal hand-written PEFT + torch training loop on svdlora's exact batches.

    python benchmarks/minimal_peft_loop.py MODEL --steps 20 --rank 16
Prints JSON with tokens/s over the training steps (model loading excluded).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from svdlora_cli.data import collate, load_examples, resolve_data_path, tokenize_examples
from svdlora_cli.training.schedule import batch_schedule


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    data = tokenize_examples(load_examples(resolve_data_path(None)), tokenizer, args.max_length)
    schedule = batch_schedule(len(data), args.batch_size, 1, 100, 0, args.steps)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(
        model, LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=targets)
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    model.train()
    with torch.no_grad():  # one untimed forward, as svdlora's untimed initial loss
        model(**collate(schedule[0].micro_batches[0], data, tokenizer.pad_token_id))
    tokens, start = 0, time.perf_counter()
    for step in schedule:
        batch = collate(step.micro_batches[0], data, tokenizer.pad_token_id)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - start
    print(json.dumps({"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}))


if __name__ == "__main__":
    main()
