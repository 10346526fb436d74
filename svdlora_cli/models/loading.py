"""Loading a model and its tokenizer with transformers, refusing remote code unless trusted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .refs import resolve_model_path


def check_remote_code(folder: Path, trust_remote_code: bool) -> None:
    """Refuse a model whose config asks to run its own Python code, unless trusted."""
    config = folder / "config.json"
    try:
        wants_code = config.is_file() and "auto_map" in json.loads(config.read_text())
    except ValueError:
        wants_code = False
    if wants_code and not trust_remote_code:
        raise CheckpointError(
            f"{folder} needs trust_remote_code: its config maps to Python code in the model folder",
            "read that code first; pass --trust-remote-code only if you trust it",
        )


def load_tokenizer(model_ref: str, trust_remote_code: bool = False) -> Any:
    """The model folder's tokenizer, with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    folder = resolve_model_path(model_ref)
    check_remote_code(folder, trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise CheckpointError(
            f"cannot load a tokenizer from {folder}: {str(exc).splitlines()[0]}",
            "the model folder needs its tokenizer files (tokenizer.json or equivalent)",
        ) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    model_ref: str, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32
) -> Any:
    """A causal LM, in fp32 unless told (training and dW both need full precision; a
    bf16/fp16 student keeps its frozen base in that dtype and its LoRA weights in fp32)."""
    from transformers import AutoModelForCausalLM

    folder = resolve_model_path(model_ref)
    check_remote_code(folder, trust_remote_code)
    try:
        return AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise CheckpointError(
            f"cannot load {folder} as a causal LM: {str(exc).splitlines()[0]}",
            "pass a Hugging Face causal-LM folder (config.json plus weights)",
        ) from exc
