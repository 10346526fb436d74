"""Setup and bookkeeping shared by teacher and student runs: model, data, logs, records."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import FieldNames, TokenizedSet, load_examples, resolve_data_path, tokenize_examples
from ..errors import CheckpointError
from ..files import write_json
from ..model_refs import resolve_model_path
from .loop import FitResult, TrainConfig
from .steplog import write_step_log


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


def storage_dtype(precision: str) -> torch.dtype:
    """The dtype a student's frozen base is stored in under a --bf16/--fp16 run."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


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


def arm_summary(name: str, result: FitResult, paths: dict[str, Path]) -> dict[str, Any]:
    """The figures a run reports in --json and the terminal."""
    rows = result.rows
    evals = [r.eval_loss for r in rows if r.eval_loss is not None]
    return {
        "name": name,
        "initial_loss": rows[0].loss,
        "final_loss": rows[-1].loss,
        "min_loss": min(r.loss for r in rows),
        "initial_eval_loss": rows[0].eval_loss,
        "final_eval_loss": evals[-1] if evals else None,
        "steps": len(rows) - 1,
        "tokens": result.tokens,
        "train_seconds": round(result.train_seconds, 3),
        "tokens_per_s": round(result.tokens_per_s, 1),
        **{k: v for k, v in result.extras.items()},
        "artifacts": {k: str(v) for k, v in paths.items()},
    }


def throughput_line(summary: dict[str, Any]) -> str:
    """One log line of a finished run's speed: tokens/s, TFLOP/s and MFU, with its peak."""
    if summary.get("reused"):
        return f"{summary['name']}: reused (trained earlier with the same inputs)"
    if summary.get("mfu") is None:
        return f"{summary['name']}: {summary.get('tokens_per_s', 0):,.0f} real tokens/s"
    return (
        f"{summary['name']}: {summary['tokens_per_s']:,.0f} real tokens/s, "
        f"{summary['tflops']:.3g} TFLOP/s, MFU {summary['mfu']:.1%} of "
        f"{summary['peak_tflops']:.4g} TFLOP/s ({summary['peak_source']}); "
        f"attention {summary.get('attention')}"
    )


def write_run_files(
    folder: Path, name: str, result: FitResult, hyperparameters: dict[str, Any]
) -> dict[str, Path]:
    """training_log_{name}.csv, batch_order_{name}.json and the hyperparameters."""
    paths = {
        "log": folder / f"training_log_{name}.csv",
        "batch_order": folder / f"batch_order_{name}.json",
    }
    write_step_log(paths["log"], result.rows)
    write_json(
        paths["batch_order"],
        {"seed": hyperparameters.get("seed"), "steps": [s.micro_batches for s in result.schedule]},
    )
    return paths


# The model folder's small files that shape a run besides its weights: the architecture
# (config.json) and the tokenizer with its chat template.
SMALL_MODEL_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
)


def _small_file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_key(
    kind: str, model_ref: str, data: Datasets, config: TrainConfig, memo: Any = None, **extra: Any
) -> str:
    """Content key of a training run: weights, config and tokenizer, data files and the
    fields read from them, hyperparameters, extras (the student's init, ranks, alpha,
    dropout and factors).

    A finished run whose record holds the same key can be reused instead of retrained.
    """
    from ..cache import content_key
    from ..checkpoints import fingerprint, open_checkpoint

    folder = resolve_model_path(model_ref)
    tokenizer = {
        f: _small_file_digest(folder / f) for f in SMALL_MODEL_FILES if (folder / f).is_file()
    }
    files = {"train": _small_file_digest(data.train_path)}
    if data.eval_path is not None:
        files["eval"] = _small_file_digest(data.eval_path)
    return content_key(
        kind,
        weights=fingerprint(open_checkpoint(folder), memo),
        tokenizer=tokenizer,
        data=files,
        fields=[data.fields.prompt, data.fields.answer],
        config=config.result_settings(),
        **extra,
    )


def reusable_summary(model_dir: Path, key: str) -> dict[str, Any] | None:
    """The stored summary of a finished run with this key whose files all still exist."""
    record_file = model_dir / "svdlora_run.json"
    if not record_file.is_file():
        return None
    try:
        record = json.loads(record_file.read_text())
    except ValueError:
        return None
    summary = record.get("summary")
    if record.get("run_key") != key or not isinstance(summary, dict):
        return None
    if not all(Path(p).exists() for p in summary.get("artifacts", {}).values()):
        return None
    return {**summary, "reused": True}


def reuse_or_key(
    kind: str,
    model_ref: str,
    data: Datasets,
    config: TrainConfig,
    model_dir: Path,
    reuse: bool,
    memo: Any = None,
    **extra: Any,
) -> tuple[str | None, dict[str, Any] | None]:
    """The run's content key (when it is wanted) and a finished run to reuse, if any."""
    if not (reuse or memo is not None):
        return None, None
    key = run_key(kind, model_ref, data, config, memo, **extra)
    return key, reusable_summary(model_dir, key) if reuse else None


def save_hyperparameters(folder: Path, record: dict[str, Any]) -> None:
    """The run's hyperparameters next to its model, as litgpt does."""
    write_json(folder / "svdlora_run.json", record)
