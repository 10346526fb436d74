"""A tiny Llama with a character-level tokenizer, built locally (no hub) for smoke runs."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any


def char_tokenizer() -> Any:
    """A fast tokenizer over printable ASCII plus <pad>, <s>, </s> and <unk>."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for char in string.printable:
        vocab.setdefault(char, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def tiny_config(arch: str = "llama", hidden: int = 32, layers: int = 2, vocab: int = 128) -> Any:
    """Llama, Qwen2 or GPT-2 config with a few layers and a small hidden size."""
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    common: dict[str, Any] = {"vocab_size": vocab, "tie_word_embeddings": False}
    if arch == "gpt2":
        return GPT2Config(
            n_embd=hidden,
            n_layer=layers,
            n_head=4,
            n_positions=512,
            bos_token_id=0,
            eos_token_id=0,
            **common,
        )
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    return cls(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        **common,
    )


def build_tiny_model(
    folder: Path, arch: str = "llama", hidden: int = 32, layers: int = 2, seed: int = 0
) -> Path:
    """Save a randomly initialised tiny causal LM and its char tokenizer as an HF folder."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..files import atomic_dir

    tokenizer = char_tokenizer()
    config = tiny_config(arch, hidden, layers)
    config.pad_token_id, config.bos_token_id, config.eos_token_id = 0, 1, 2
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder
