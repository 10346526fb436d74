"""Greedy decoding on held-out problems and exact match of the final `#### <number>`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from ..data import Example, prompt_text

FINAL_ANSWER = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)")


def final_number(text: str) -> str | None:
    """The number after the first `####`, without thousands separators or a trailing `.0`."""
    match = FINAL_ANSWER.search(text)
    if match is None:
        return None
    value = match.group(1).replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value or None


@torch.no_grad()
def greedy_completions(
    model: Any,
    tokenizer: Any,
    questions: Sequence[str],
    max_new_tokens: int = 256,
    batch_size: int = 8,
    copies: int = 1,
) -> list[list[str]]:
    """Greedy continuations of each question's prompt, batched with left padding.

    Each batch holds `copies` row blocks of the same `batch_size` questions (one per model
    when `adapter_batch.adapter_blocks` gives each block its own adapter); the result has
    one list of completions per block. The KV cache is static: a growing cache copies
    itself at every step, which cost a third of a decode step at 56 rows on a CPU.
    """
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    outputs: list[list[str]] = [[] for _ in range(copies)]
    model.eval()
    for start in range(0, len(questions), batch_size):
        prompts = [prompt_text(tokenizer, q) for q in questions[start : start + batch_size]]
        batch = tokenizer(
            prompts * copies, return_tensors="pt", padding=True, add_special_tokens=False
        ).to(device)
        # generate sizes a static cache by the longest call so far; sized by this call,
        # every batch decodes the same way whatever was decoded before it.
        vars(_generating(model)).pop("_previous_max_cache_length", None)
        generated = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            cache_implementation="static",
            disable_compile=True,
        )
        texts = tokenizer.batch_decode(
            generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
        )
        for copy in range(copies):
            outputs[copy] += texts[copy * len(prompts) : (copy + 1) * len(prompts)]
    return outputs


def _generating(model: Any) -> Any:
    """The transformers model whose `generate` runs (a PeftModel's base model)."""
    base = getattr(model, "get_base_model", None)
    return base() if base is not None else model


def score(examples: Sequence[Example], completions: Sequence[str]) -> dict[str, Any]:
    """Share of examples whose completion's final number equals the reference's."""
    correct = answered = 0
    samples = []
    for example, completion in zip(examples, completions, strict=True):
        expected, got = final_number(example.answer), final_number(completion)
        ok = expected is not None and got == expected
        correct += ok
        answered += got is not None
        if len(samples) < 3:
            samples.append(
                {
                    "question": example.prompt,
                    "expected": expected,
                    "got": got,
                    "completion": completion,
                }
            )
    return {
        "accuracy": correct / len(examples) if examples else None,
        "correct": correct,
        "answer_rate": answered / len(examples) if examples else None,
        "total": len(examples),
        "samples": samples,
    }


def exact_match(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    max_new_tokens: int = 256,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Greedy-decode every example with one model and score its final numbers."""
    questions = [e.prompt for e in examples]
    (completions,) = greedy_completions(model, tokenizer, questions, max_new_tokens, batch_size)
    return score(examples, completions)


def load_for_generation(base_model: str, adapter: str | None = None) -> tuple[Any, Any]:
    """The base model, optionally with a LoRA adapter merged in, and its tokenizer."""
    from ..models.loading import load_model, load_tokenizer

    model = load_model(base_model)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model, load_tokenizer(base_model)
