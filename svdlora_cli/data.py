"""Training data: load rows, apply a prompt template, tokenize with answer-only labels.

Rows may be `{question, answer}`, `{prompt, response}`, `{instruction, input,
output}` or `{messages: [...]}` (the last assistant message is the answer),
in a JSON list or JSONL file. Labels are -100 on prompt and padding tokens, so
the loss covers only the answer.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SvdloraError, TokenizerMismatchError

IGNORE_INDEX = -100
PLAIN_PROMPT = "Question: {question}\nAnswer: "
BUILTIN_DIR = Path(__file__).resolve().parents[1] / "data" / "training_data"
BUILTIN_TRAIN = BUILTIN_DIR / "train_flattened.json"
BUILTIN_EVAL = BUILTIN_DIR / "eval.json"
log = logging.getLogger("svdlora")


class DataError(SvdloraError):
    """A dataset file is missing, unreadable, empty or has a malformed row."""


@dataclass(frozen=True)
class Example:
    """One prompt/answer pair, before templating."""

    prompt: str
    answer: str


@dataclass(frozen=True)
class FieldNames:
    """Which keys hold the prompt and the answer; None means detect the row shape."""

    prompt: str | None = None
    answer: str | None = None


def resolve_data_path(path: str | os.PathLike[str] | None, which: str = "train") -> Path:
    """A user path, or the built-in set (`None` or the word `builtin`)."""
    if path is None or str(path) == "builtin":
        builtin = BUILTIN_TRAIN if which == "train" else BUILTIN_EVAL
        if not builtin.is_file():
            raise DataError(
                f"the built-in {which} set {builtin} is missing",
                "run `python data/make_math_dataset.py` in the svdlora checkout, "
                "or pass a data file",
            )
        return builtin
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise DataError(f"data file not found: {resolved}", "pass a JSON or JSONL file of rows")
    return resolved


def _read_rows(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}", "pass a UTF-8 JSON or JSONL file") from exc
    if not text.strip():
        raise DataError(f"{path} is empty", 'add rows such as {"question": ..., "answer": ...}')
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path} is not valid JSON: {exc}", "fix the file, or use JSONL"
            ) from exc
        return rows
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path} line {number} is not valid JSON: {exc.msg}",
                "a data file is a JSON list of rows, or one JSON object per line (JSONL)",
            ) from exc
    return rows


def _text(row: dict, key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        state = (
            "missing" if key not in row else "empty" if isinstance(value, str) else "not a string"
        )
        raise DataError(
            f"{where}: field {key!r} is {state}",
            "every row needs a non-empty prompt and answer (see --prompt-field/--answer-field)",
        )
    return value


def _example(row: Any, where: str, fields: FieldNames) -> Example:
    if not isinstance(row, dict):
        raise DataError(
            f"{where} is a {type(row).__name__}, not an object", "each row is a JSON object"
        )
    if fields.prompt or fields.answer:
        return Example(
            _text(row, fields.prompt or "question", where),
            _text(row, fields.answer or "answer", where),
        )
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(
                f"{where}: 'messages' must be a non-empty list", "use [{role, content}, ...]"
            )
        last = messages[-1]
        if not isinstance(last, dict) or last.get("role") != "assistant":
            raise DataError(
                f"{where}: the last message must be the assistant's answer", "end with it"
            )
        users = [m for m in messages[:-1] if isinstance(m, dict) and m.get("role") == "user"]
        if not users:
            raise DataError(f"{where}: no user message before the answer", "add a user turn")
        return Example(_text(users[-1], "content", where), _text(last, "content", where))
    if "instruction" in row:
        prompt = _text(row, "instruction", where)
        extra = row.get("input")
        if isinstance(extra, str) and extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        return Example(prompt, _text(row, "output", where))
    if "prompt" in row:
        return Example(_text(row, "prompt", where), _text(row, "response", where))
    if "question" in row:
        return Example(_text(row, "question", where), _text(row, "answer", where))
    raise DataError(
        f"{where} has none of the known shapes "
        f"(keys: {', '.join(sorted(map(str, row))) or 'none'})",
        "use {question, answer}, {prompt, response}, {instruction, input, output} or {messages}, "
        "or name the fields with --prompt-field/--answer-field",
    )


def load_examples(path: str | os.PathLike[str], fields: FieldNames = FieldNames()) -> list[Example]:
    """Every row of a JSON list or JSONL file as an Example; the first bad row is an error."""
    file = Path(path)
    rows = _read_rows(file)
    if not isinstance(rows, list):
        raise DataError(
            f"{file} holds a JSON {type(rows).__name__}, not a list", "wrap the rows in [...]"
        )
    if not rows:
        raise DataError(f"{file} has no rows", "add at least one {question, answer} row")
    return [_example(row, f"{file.name} row {i}", fields) for i, row in enumerate(rows, start=1)]


def prompt_text(tokenizer: Any, question: str) -> str:
    """The chat template's user turn plus generation prompt, else the plain template."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    return PLAIN_PROMPT.format(question=question)


def _batch_ids(tokenizer: Any, texts: Sequence[str], chunk: int = 1024) -> list[list[int]]:
    """Token ids of each text, encoded in batches (a fast tokenizer's batch path is
    several times quicker than one call per text, with the same ids)."""
    out: list[list[int]] = []
    for start in range(0, len(texts), chunk):
        encoded = tokenizer(list(texts[start : start + chunk]), add_special_tokens=False)
        out.extend(list(ids) for ids in encoded["input_ids"])
    return out


@dataclass
class TokenizedSet:
    """Tokenized examples plus how many were truncated or dropped."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    truncated: int
    dropped: int

    def __len__(self) -> int:
        return len(self.input_ids)

    def answer_tokens(self) -> int:
        return sum(sum(1 for t in row if t != IGNORE_INDEX) for row in self.labels)


def tokenize_examples(examples: Sequence[Example], tokenizer: Any, max_length: int) -> TokenizedSet:
    """Prompt + answer + EOS token ids with labels masked on the prompt, cut at max_length.

    Prompt and answer are tokenized separately and concatenated, so the mask
    boundary is exact. A row whose prompt alone fills max_length keeps no answer
    token and is dropped (with a warning); if every row is dropped it is an error.
    """
    if max_length < 2:
        raise SvdloraError(f"--max-length must be at least 2, got {max_length}", "use e.g. 512")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids_out, labels_out, truncated, dropped = [], [], 0, 0
    prompts = _batch_ids(tokenizer, [prompt_text(tokenizer, e.prompt) for e in examples])
    answers = _batch_ids(tokenizer, [e.answer for e in examples])
    for prompt, answer_ids in zip(prompts, answers, strict=True):
        answer = answer_ids + eos
        ids = prompt + answer
        labels = [IGNORE_INDEX] * len(prompt) + answer
        if len(ids) > max_length:
            truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
        if all(t == IGNORE_INDEX for t in labels):
            dropped += 1
            continue
        ids_out.append(ids)
        labels_out.append(labels)
    if not ids_out:
        raise DataError(
            f"every row is longer than --max-length {max_length} before its answer starts",
            "raise --max-length",
        )
    if truncated:
        log.warning(
            "%d of %d rows were cut at --max-length %d (%d dropped: no answer token left)",
            truncated,
            len(examples),
            max_length,
            dropped,
        )
    return TokenizedSet(ids_out, labels_out, truncated, dropped)


def check_token_ids(model: Any, tokenizer: Any, *sets: TokenizedSet | None) -> None:
    """Every id a batch feeds `model` (the data's tokens, padding) must have a row in its
    input embedding; else TokenizerMismatchError, not `IndexError: index out of range in
    self` mid-step (on a GPU, a device-side assert)."""
    rows = model.get_input_embeddings().num_embeddings
    ids = {"the pad token": tokenizer.pad_token_id, "the EOS token": tokenizer.eos_token_id}
    for data in sets:
        if data is not None and data.input_ids:
            top = max(max(row) for row in data.input_ids if row)
            ids["a token of the data"] = max(top, ids.get("a token of the data") or 0)
    over = {what: i for what, i in ids.items() if i is not None and i >= rows}
    if not over:
        return
    what, top = max(over.items(), key=lambda item: item[1])
    raise TokenizerMismatchError(
        f"the tokenizer ({len(tokenizer)} tokens) gives id {top} for {what}, but the "
        f"model's input embedding has {rows} rows",
        "use the tokenizer that belongs to the model (the same folder), or resize the "
        "model's embeddings to the tokenizer (model.resize_token_embeddings(len(tokenizer))) "
        "and save it",
    )


def collate(indices: Sequence[int], data: TokenizedSet, pad_id: int) -> dict[str, Any]:
    """Right-padded tensors for a batch of example indices."""
    import torch

    width = max(len(data.input_ids[i]) for i in indices)
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    labels = torch.full((len(indices), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        n = len(data.input_ids[i])
        ids[row, :n] = torch.tensor(data.input_ids[i])
        labels[row, :n] = torch.tensor(data.labels[i])
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


@dataclass
class Datasets:
    train: TokenizedSet
    evaluation: TokenizedSet | None
    train_path: Path
    eval_path: Path | None
    fields: FieldNames = field(default_factory=FieldNames)  # the keys read from each row


def prepare_data(
    tokenizer: Any,
    train_path: str | None,
    eval_path: str | None,
    max_length: int,
    fields: FieldNames = FieldNames(),
) -> Datasets:
    """Tokenized train and eval sets; the built-in eval set goes with the built-in train set.

    Each file is tokenized once per process for a given tokenizer and max length: the
    arms of a grid (and the teacher before them) share the result.
    """
    train_file = resolve_data_path(train_path, "train")
    builtin = train_path is None or str(train_path) == "builtin"
    eval_file = resolve_data_path(eval_path, "eval") if (eval_path or builtin) else None
    train = _tokenized(train_file, tokenizer, max_length, fields)
    evaluation = _tokenized(eval_file, tokenizer, max_length, fields) if eval_file else None
    return Datasets(train, evaluation, train_file, eval_file, fields)


_TOKENIZED: dict[tuple, TokenizedSet] = {}


def _tokenized(file: Path, tokenizer: Any, max_length: int, fields: FieldNames) -> TokenizedSet:
    """`tokenize_examples` of a file, remembered by the file's identity and content stamp,
    the tokenizer (name, vocabulary size, chat template) and the max length."""
    stat = file.stat()
    key = (
        str(file.resolve()),
        stat.st_size,
        stat.st_mtime_ns,
        getattr(tokenizer, "name_or_path", None),
        len(tokenizer),
        getattr(tokenizer, "chat_template", None),
        max_length,
        fields,
    )
    if key not in _TOKENIZED:
        if len(_TOKENIZED) >= 8:
            _TOKENIZED.pop(next(iter(_TOKENIZED)))
        _TOKENIZED[key] = tokenize_examples(load_examples(file, fields), tokenizer, max_length)
    return _TOKENIZED[key]
