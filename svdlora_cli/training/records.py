"""Bookkeeping of teacher and student runs: run keys and reuse, summaries, logs and records."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..data import Datasets
from ..files import write_json
from ..models.refs import resolve_model_path
from .config import TrainConfig
from .loop import FitResult
from .steplog import write_step_log


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


def comparable_identity(model_ref: str, data: Datasets, memo: Any = None) -> dict[str, Any]:
    """What makes two runs comparable, by content: the base's weights fingerprint and the
    sha256 of the train and eval files (`compare` pools runs only when these agree)."""
    from ..models.checkpoints import fingerprint, open_checkpoint

    return {
        "base_fingerprint": fingerprint(open_checkpoint(resolve_model_path(model_ref)), memo),
        "train_data_sha256": _small_file_digest(data.train_path),
        "eval_data_sha256": _small_file_digest(data.eval_path) if data.eval_path else None,
    }


def run_key(
    kind: str,
    model_ref: str,
    data: Datasets,
    config: TrainConfig,
    content: dict[str, Any],
    **extra: Any,
) -> str:
    """Content key of a training run: weights, config and tokenizer, data files and the
    fields read from them, hyperparameters, extras (the student's init, ranks, alpha,
    dropout and factors). `content` is the run's `comparable_identity`.

    A finished run whose record holds the same key can be reused instead of retrained.
    """
    from ..store.cache import content_key

    folder = resolve_model_path(model_ref)
    tokenizer = {
        f: _small_file_digest(folder / f) for f in SMALL_MODEL_FILES if (folder / f).is_file()
    }
    files = {"train": content["train_data_sha256"]}
    if data.eval_path is not None:
        files["eval"] = content["eval_data_sha256"]
    return content_key(
        kind,
        weights=content["base_fingerprint"],
        tokenizer=tokenizer,
        data=files,
        fields=[data.fields.prompt, data.fields.answer],
        config=config.result_settings(),
        # since eval_precision.py one process evaluates bf16/fp16 runs in fp32: older runs,
        # evaluated under autocast, are not reused
        **({"evaluation": "fp32"} if config.precision in ("bf16", "fp16") else {}),
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
) -> tuple[str | None, dict[str, Any] | None, dict[str, Any]]:
    """The run's content key (when it is wanted), a finished run to reuse (if any) and the
    run's `comparable_identity` (for its record): base and data are read once."""
    content = comparable_identity(model_ref, data, memo)
    if not (reuse or memo is not None):
        return None, None, content
    key = run_key(kind, model_ref, data, config, content, **extra)
    return key, reusable_summary(model_dir, key) if reuse else None, content


def save_hyperparameters(folder: Path, record: dict[str, Any]) -> None:
    """The run's hyperparameters next to its model, as litgpt does."""
    write_json(folder / "svdlora_run.json", record)
