"""Greedy decoding for `compare --generate`, three ways side by side in one run.

python benchmarks/bench_decode.py --model smollm2-135m \\
    --runs svdlora-runs/demo/training_results --limit 8 --max-new-tokens 200

The base and each LoRA adapter under --runs (its `final_model_*` folders; without
--runs, --adapters N random PEFT adapters of the base, rank 8) answer --limit eval
problems from row --offset on (default 16: the demo's, after the 16 its eval loss used):

- before: one model after another, the adapter merged, `generate` (the code before
  2026-12-05, kept here as it was);
- alone: one model after another, the adapter merged, `analysis.generation`'s own greedy
  loop (finished rows leave the batch);
- stacked: every model in one batch (`analysis.adapter_batch.stacked_completions`), what
  `compare --generate` does now.

Model loading is inside each timing (each way loads what it needs). The JSON gives the
seconds of each way, before/stacked and before/alone, and how many answers differ from
the before way's (greedy choices that tie to within rounding can differ; on the demo's
students none did).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def random_adapters(base: str, count: int, folder: Path) -> list[str]:
    """PEFT-made rank-8 LoRAs of `base`, lora_B drawn normal so each changes the answers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for i in range(count):
        torch.manual_seed(i)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base),
            LoraConfig(r=8, lora_alpha=8, target_modules="all-linear"),
        )
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.02)
        model.save_pretrained(folder / f"adapter{i}")
        paths.append(str(folder / f"adapter{i}"))
    return paths


@torch.no_grad()
def before(base: str, adapter: str | None, questions: list[str], max_new: int) -> list[str]:
    """The code before: merged adapter, `generate` with its default cache, batches of 8."""
    from svdlora_cli.analysis.generation import load_for_generation
    from svdlora_cli.data import prompt_text

    model, tokenizer = load_for_generation(base, adapter)
    tokenizer.padding_side = "left"
    model.eval()
    texts: list[str] = []
    for start in range(0, len(questions), 8):
        prompts = [prompt_text(tokenizer, q) for q in questions[start : start + 8]]
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(
            **batch,
            max_new_tokens=max_new,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], True)
    return texts


def alone(base: str, adapter: str | None, questions: list[str], max_new: int) -> list[str]:
    from svdlora_cli.analysis.generation import greedy_completions, load_for_generation

    model, tokenizer = load_for_generation(base, adapter)
    return greedy_completions(model, tokenizer, questions, max_new)[0]


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    from svdlora_cli.analysis.adapter_batch import stacked_completions
    from svdlora_cli.data import load_examples, resolve_data_path
    from svdlora_cli.models.refs import resolve_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--runs", type=Path, help="a folder with final_model_* adapters")
    parser.add_argument("--adapters", type=int, default=3, help="random adapters without --runs")
    parser.add_argument("--offset", type=int, default=16)
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    base = str(resolve_model_path(args.model))
    if args.runs is not None:
        adapters = sorted(str(p) for p in args.runs.glob("final_model_*") if p.is_dir())
        if not adapters:
            sys.exit(f"no final_model_* folders under {args.runs}")
    else:
        adapters = random_adapters(base, args.adapters, Path(tempfile.mkdtemp()))
    questions = [e.prompt for e in load_examples(resolve_data_path(None, "eval"))]
    questions = questions[args.offset : args.offset + args.limit]
    members: list[str | None] = [None, *adapters]
    ways = {
        "before": lambda: [before(base, a, questions, args.max_new_tokens) for a in members],
        "alone": lambda: [alone(base, a, questions, args.max_new_tokens) for a in members],
        "stacked": lambda: stacked_completions(base, members, questions, args.max_new_tokens),
    }
    seconds, answers = {}, {}
    for name, way in ways.items():
        spent, answers[name] = timed(way)
        seconds[name] = round(spent, 2)  # the ratios below are of these reported figures
        print(f"{name}: {spent:.1f} s", file=sys.stderr)
    figures = {
        "models": len(members),
        "questions": len(questions),
        "max_new_tokens": args.max_new_tokens,
        "threads": torch.get_num_threads(),
        **{f"{name}_seconds": s for name, s in seconds.items()},
        "before_over_stacked": round(seconds["before"] / seconds["stacked"], 2),
        "before_over_alone": round(seconds["before"] / seconds["alone"], 2),
        **{
            f"{name}_answers_differing": sum(
                x != y
                for ours, theirs in zip(answers[name], answers["before"], strict=True)
                for x, y in zip(ours, theirs, strict=True)
            )
            for name in ("alone", "stacked")
        },
    }
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
