"""Step 1 of the seed plan: full-parameter SFT of the base model, the teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data import FieldNames, check_token_ids, prepare_data
from ..files import atomic_dir, ensure_writable_dir, write_run_config
from ..models.loading import load_model, load_tokenizer
from .accelerator import make_accelerator
from .arm import ArmRun
from .config import TrainConfig
from .loop import StepProgress
from .records import (
    arm_summary,
    reuse_or_key,
    save_hyperparameters,
    write_run_files,
)


def train_teacher(
    model_name: str,
    output_dir: Path,
    config: TrainConfig,
    data_path: str | None = None,
    eval_path: str | None = None,
    fields: FieldNames = FieldNames(),
    progress: StepProgress | None = None,
    reuse: bool = False,
    memo: Any = None,
) -> dict[str, Any]:
    """Fine-tune every parameter; write final_model/ (safetensors + tokenizer) and the step log.

    With `reuse`, a finished run in `output_dir` with the same inputs is returned as is.
    """
    import torch

    config.validate()
    tokenizer = load_tokenizer(model_name, config.trust_remote_code)
    data = prepare_data(tokenizer, data_path, eval_path, config.max_length, fields)
    final = Path(output_dir) / "final_model"
    key, found, content = reuse_or_key("teacher-run", model_name, data, config, final, reuse, memo)
    if found is not None:
        return found
    accelerator = make_accelerator(config.device, config.precision)
    torch.manual_seed(config.seed)
    model = load_model(model_name, config.trust_remote_code)
    check_token_ids(model, tokenizer, data.train, data.evaluation)
    run = ArmRun(tokenizer, data, config, accelerator, progress, Path(output_dir))
    result, state_dict = run.fit(model, "teacher", "the teacher's trained weights")
    result.extras.update(train_rows=len(data.train), truncated_rows=data.train.truncated)
    summary = arm_summary("teacher", result, {})
    if accelerator.is_main_process:
        folder = ensure_writable_dir(output_dir)
        final = folder / "final_model"
        paths = {
            "final_model": final,
            **write_run_files(folder, "teacher", result, config.to_dict()),
        }
        summary = arm_summary("teacher", result, paths)
        record = _record(model_name, data, config) | content
        with atomic_dir(final) as tmp:
            # fp32 on purpose: rounding W + dW to bf16 would bury a small dW in noise.
            accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
            save_hyperparameters(tmp, {**record, "run_key": key, "summary": summary})
        write_run_config(folder, "train-teacher", record, {"base_model": model_name})
    return summary


def _record(model_name: str, data: Any, config: TrainConfig) -> dict[str, Any]:
    return {
        "role": "teacher",
        "base_model": model_name,
        "train_data": str(data.train_path),
        "eval_data": str(data.eval_path) if data.eval_path else None,
        **config.to_dict(),
    }
