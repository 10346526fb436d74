"""Greedy decoding on held-out problems and exact match of the final `#### <number>`."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
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


# Generation settings that change a greedy choice; the own decoder runs only when the
# model's generation_config leaves them all at their neutral value.
GREEDY_NEUTRAL: dict[str, Any] = {
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "min_length": 0,
    "min_new_tokens": None,
    "sequence_bias": None,
    "exponential_decay_length_penalty": None,
    "renormalize_logits": False,
    "stop_strings": None,
    "watermarking_config": None,
}

# What `greedy_tokens`'s own loop passes to the model's forward, besides its KV cache
# (`cache` in transformers 5.25, `past_key_values` in earlier releases).
OWN_LOOP_INPUTS = ("attention_mask", "position_ids", "use_cache", "logits_to_keep")
CACHE_ARGUMENTS = ("cache", "past_key_values")

# Hears, for each row of the batch still decoding, which copy (row block) it belongs to.
BlocksCallback = Callable[[Sequence[int]], None]


@torch.no_grad()
def greedy_completions(
    model: Any,
    tokenizer: Any,
    questions: Sequence[str],
    max_new_tokens: int = 256,
    batch_size: int = 8,
    copies: int = 1,
    on_blocks: BlocksCallback | None = None,
) -> list[list[str]]:
    """Greedy continuations of each question's prompt, batched with left padding.

    Each batch holds `copies` row blocks of the same `batch_size` questions (one per model
    when `adapter_batch` gives each block its own adapter); the result has one list of
    completions per block. `on_blocks` hears the block of each row still decoding
    (`greedy_tokens` drops finished rows).
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
        tokens = greedy_tokens(
            _generating(model),
            batch["input_ids"],
            batch["attention_mask"],
            max_new_tokens,
            tokenizer.eos_token_id,
            lambda rows, n=len(prompts): on_blocks and on_blocks([r // n for r in rows]),
        )
        texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
        for copy in range(copies):
            outputs[copy] += texts[copy * len(prompts) : (copy + 1) * len(prompts)]
    return outputs


@torch.no_grad()
def greedy_tokens(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | None,
    on_rows: Callable[[Sequence[int]], Any],
) -> list[list[int]]:
    """Each row's greedy new tokens, up to and including its EOS.

    A row that has ended leaves the batch (its KV cache rows are dropped), so the rows
    still decoding never wait on finished ones: decoding on a CPU is bound by compute
    once a batch holds tens of rows, and most rows end long before the longest.
    `on_rows` hears the batch's row indices still decoding, before each forward that
    changes them. This is `generate`'s greedy search (its inputs, its left-padded
    position ids). A model whose generation_config changes greedy choices
    (`GREEDY_NEUTRAL`), or whose forward lacks one of `OWN_LOOP_INPUTS` or a cache
    argument, decodes through `generate` itself, with every row to the end.
    """
    cache_argument = _cache_argument(model)
    if cache_argument is None:
        on_rows(range(len(input_ids)))
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos_token_id,
            pad_token_id=eos_token_id,
        )
        new = [row[input_ids.shape[1] :].tolist() for row in generated]
        return [row[: row.index(eos_token_id) + 1] if eos_token_id in row else row for row in new]
    from transformers import DynamicCache

    rows = list(range(len(input_ids)))
    tokens: list[list[int]] = [[] for _ in rows]
    on_rows(rows)
    position_ids = attention_mask.long().cumsum(-1) - 1
    position_ids.masked_fill_(attention_mask == 0, 1)
    cache = DynamicCache(config=model.config)
    next_ids = input_ids
    for step in range(max_new_tokens):
        logits = model(
            input_ids=next_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{cache_argument: cache},
            logits_to_keep=1,
        ).logits
        chosen = logits[:, -1].float().argmax(-1)
        going = []
        for i, token in enumerate(chosen.tolist()):
            tokens[rows[i]].append(token)
            if token != eos_token_id:
                going.append(i)
        if not going or step == max_new_tokens - 1:
            break
        if len(going) < len(rows):
            keep = torch.tensor(going, device=chosen.device)
            cache.batch_select_indices(keep)
            attention_mask, position_ids, chosen = (
                attention_mask[keep],
                position_ids[keep],
                chosen[keep],
            )
            rows = [rows[i] for i in going]
            on_rows(rows)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)
        position_ids = position_ids[:, -1:] + 1
        next_ids = chosen[:, None]
    return tokens


def _cache_argument(model: Any) -> str | None:
    """The forward argument that takes the KV cache, when `greedy_tokens`'s own loop can
    decode as `generate` would (no generation setting changes a greedy choice, and the
    forward takes every input the loop passes); None otherwise."""
    import inspect

    config = model.generation_config.to_dict()
    if any(config.get(key, value) not in (None, value) for key, value in GREEDY_NEUTRAL.items()):
        return None
    accepted = inspect.signature(model.forward).parameters
    if not all(name in accepted for name in OWN_LOOP_INPUTS):
        return None
    return next((name for name in CACHE_ARGUMENTS if name in accepted), None)


def _generating(model: Any) -> Any:
    """The transformers model that decodes (a PeftModel's base model, LoRA layers and all)."""
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


def load_for_generation(
    base_model: str, adapter: str | None = None, device: Any = "cpu"
) -> tuple[Any, Any]:
    """The base model, optionally with a LoRA adapter merged in, on `device`, and its tokenizer."""
    from ..models.loading import load_model, load_tokenizer

    model = load_model(base_model)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model.to(device), load_tokenizer(base_model)
