"""Data loading: row shapes, templates, the answer-only label mask, clear errors."""

from __future__ import annotations

import json

import pytest

from svdlora_cli.data import (
    IGNORE_INDEX,
    PLAIN_PROMPT,
    DataError,
    Example,
    FieldNames,
    collate,
    load_examples,
    prompt_text,
    tokenize_examples,
)
from svdlora_cli.models.tiny import char_tokenizer


def _write(path, rows):
    path.write_text(json.dumps(rows))
    return path


def test_every_row_shape_is_read(tmp_path):
    rows = [
        {"question": "q1", "answer": "a1"},
        {"prompt": "q2", "response": "a2"},
        {"instruction": "q3", "input": "ctx", "output": "a3"},
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "q4"},
                {"role": "assistant", "content": "a4"},
            ]
        },
    ]
    examples = load_examples(_write(tmp_path / "d.json", rows))
    assert examples == [
        Example("q1", "a1"),
        Example("q2", "a2"),
        Example("q3\n\nctx", "a3"),
        Example("q4", "a4"),
    ]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_examples(jsonl) == examples
    custom = _write(tmp_path / "c.json", [{"problem": "p", "solution": "s"}])
    assert load_examples(custom, FieldNames("problem", "solution")) == [Example("p", "s")]


def test_label_mask_is_exactly_the_answer_tokens():
    tok = char_tokenizer()
    data = tokenize_examples([Example("What is 2+2?", "2 + 2 = 4\n#### 4")], tok, 512)
    ids, labels = data.input_ids[0], data.labels[0]
    prompt = PLAIN_PROMPT.format(question="What is 2+2?")
    assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    answer_ids = [t for t in labels if t != IGNORE_INDEX]
    assert tok.decode(answer_ids) == "2 + 2 = 4\n#### 4</s>"
    assert ids[len(prompt) :] == answer_ids and tok.decode(ids[: len(prompt)]) == prompt
    batch = collate([0], data, tok.pad_token_id)
    assert batch["labels"].tolist()[0] == labels


def test_chat_template_is_used_when_present():
    tok = char_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert prompt_text(tok, "hi") == "<user>hi\n<assistant>"
    data = tokenize_examples([Example("hi", "yo")], tok, 64)
    assert tok.decode([t for t in data.labels[0] if t != IGNORE_INDEX]) == "yo</s>"


def test_padding_is_masked_in_a_batch():
    tok = char_tokenizer()
    data = tokenize_examples(
        [Example("a", "b"), Example("longer question", "longer answer")], tok, 512
    )
    batch = collate([0, 1], data, tok.pad_token_id)
    short = len(data.input_ids[0])
    assert batch["attention_mask"][0, short:].sum() == 0
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all()


def test_truncation_is_counted_and_all_too_long_is_an_error(caplog):
    tok = char_tokenizer()
    examples = [Example("q", "a" * 30), Example("q", "a"), Example("q" * 10, "a")]
    data = tokenize_examples(examples, tok, 24)
    assert (data.truncated, data.dropped, len(data)) == (2, 1, 2)  # the third has no answer left
    assert len(data.input_ids[0]) == 24 and data.answer_tokens() == 4 + 2
    assert "2 of 3 rows were cut at --max-length 24 (1 dropped" in caplog.text
    with pytest.raises(DataError, match="every row is longer"):
        tokenize_examples([Example("q" * 40, "a")], tok, 24)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "is empty"),
        ("[]", "has no rows"),
        ("[1, 2", "not valid JSON"),
        ('{"question": "q", "answer": "a"}\nnot json\n', "line 2"),
        (
            '[{"question": "q", "answer": "a"}, {"question": "q"}]',
            "row 2: field 'answer' is missing",
        ),
        ('[{"question": "q", "answer": "  "}]', "row 1: field 'answer' is empty"),
        ('[{"question": 3, "answer": "a"}]', "row 1: field 'question' is not a string"),
        ('[{"text": "x"}]', "row 1 has none of the known shapes"),
        ('[["q", "a"]]', "row 1 is a list"),
        ('{"question": "q"}', "field 'answer' is missing"),
    ],
)
def test_malformed_data_names_the_row(tmp_path, content, fragment):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError, match=fragment.replace("(", r"\(")):
        load_examples(path)


def test_batched_encoding_gives_the_ids_of_one_call_per_text():
    from svdlora_cli.data import _batch_ids

    tok = char_tokenizer()
    texts = [f"What is {i} times {i * 7}?\n#### {i * i * 7}" for i in range(7)] + ["x"]
    separate = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert _batch_ids(tok, texts, chunk=3) == separate
    assert _batch_ids(tok, texts) == separate


def test_a_file_is_tokenized_once_per_process_until_it_changes(tmp_path, monkeypatch):
    import svdlora_cli.data as data_module

    calls = []
    real = data_module.tokenize_examples
    counted = lambda *a, **k: calls.append(1) or real(*a, **k)  # noqa: E731
    monkeypatch.setattr(data_module, "tokenize_examples", counted)
    tok = char_tokenizer()
    path = _write(tmp_path / "t.json", [{"question": "q1", "answer": "a1"}])
    first = data_module.prepare_data(tok, str(path), None, 64)
    again = data_module.prepare_data(tok, str(path), None, 64)
    assert again.train is first.train and len(calls) == 1
    data_module.prepare_data(tok, str(path), None, 32)  # another max length: tokenized again
    assert len(calls) == 2
    _write(path, [{"question": "q1", "answer": "a longer answer"}])
    changed = data_module.prepare_data(tok, str(path), None, 64)
    assert len(calls) == 3 and changed.train.input_ids != first.train.input_ids


def test_token_ids_past_the_embedding_are_refused_before_training():
    import torch

    from svdlora_cli.data import check_token_ids
    from svdlora_cli.errors import TokenizerMismatchError

    tok = char_tokenizer()  # about 100 tokens: "z" has an id near the top
    data = tokenize_examples([Example("What is z?", "zz")], tok, 64)
    top = max(max(row) for row in data.input_ids)

    class Model(torch.nn.Module):
        def __init__(self, rows: int) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(rows, 4)

        def get_input_embeddings(self) -> torch.nn.Embedding:
            return self.embed

    check_token_ids(Model(top + 1), tok, data, None)  # every id has its row: fine
    with pytest.raises(TokenizerMismatchError) as info:
        check_token_ids(Model(top), tok, data)
    assert f"gives id {top}" in info.value.message and f"{top} rows" in info.value.message
    assert "tokenizer that belongs to the model" in info.value.hint
    with pytest.raises(IndexError, match="index out of range in self"):  # what it prevents
        Model(top).embed(torch.tensor(data.input_ids))
