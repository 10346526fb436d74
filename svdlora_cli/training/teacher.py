"""Step 1 of the seed plan: full-parameter SFT of the base model, the teacher."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data import FieldNames, check_token_ids, prepare_data
from ..files import atomic_dir, ensure_writable_dir, write_run_config
from ..models.loading import load_model, load_tokenizer
from .accelerator import gathered_state_dict, make_accelerator
from .arm import ArmRun
from .config import TrainConfig
from .loop import StepProgress
from .records import (
    arm_summary,
    reuse_or_key,
    run_key,
    save_hyperparameters,
    write_run_files,
)
from .steplog import StepRow
from .teacher_checkpoints import (
    check_save_steps,
    checkpoint_dir,
    drop_stale_checkpoints,
    marker,
    missing_checkpoints,
    save_checkpoint_folder,
    write_marker,
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
    save_steps: Sequence[int] = (),
) -> dict[str, Any]:
    """Fine-tune every parameter; write final_model/ (safetensors + tokenizer) and the step log.

    `save_steps`: after each of these optimizer steps the full weights also go to
    checkpoints/step_<k>/ (see teacher_checkpoints.py). With `reuse`, a finished run in
    `output_dir` with the same inputs is returned as is when it has every requested
    checkpoint too; one that lacks some is trained again (same result), writing them.
    """
    import torch

    from .schedule import training_schedule

    config.validate()
    tokenizer = load_tokenizer(model_name, config.trust_remote_code)
    data = prepare_data(tokenizer, data_path, eval_path, config.max_length, fields)
    total = len(training_schedule(data.train, config, config.epochs, config.max_steps))
    check_save_steps(save_steps, total)
    final = Path(output_dir) / "final_model"
    key, found, content = reuse_or_key("teacher-run", model_name, data, config, final, reuse, memo)
    # The markers name the run that wrote them: the key of its inputs, as reuse reads it.
    key = key or run_key("teacher-run", model_name, data, config, content)
    if found is not None and not missing_checkpoints(Path(output_dir), save_steps, key):
        return found | _checkpoint_paths(Path(output_dir), save_steps)
    if config.resume:
        _check_resumed_checkpoints(Path(output_dir), save_steps, key)
    accelerator = make_accelerator(config.device, config.precision)
    torch.manual_seed(config.seed)
    model = load_model(model_name, config.trust_remote_code)
    check_token_ids(model, tokenizer, data.train, data.evaluation)
    run = ArmRun(tokenizer, data, config, accelerator, progress, Path(output_dir))
    wanted = set(save_steps)

    def keep(row: StepRow) -> None:
        """The weights after a requested step, as final_model's are saved (a collective)."""
        if row.step not in wanted:
            return
        state = gathered_state_dict(accelerator, model)
        if accelerator.is_main_process:
            save_checkpoint_folder(
                checkpoint_dir(output_dir, row.step),
                accelerator.unwrap_model(model),
                state,
                tokenizer,
                marker(row.step, total, row.tokens, row.flops, model_name, key),
            )
        accelerator.wait_for_everyone()

    result, state_dict = run.fit(
        model, "teacher", "the teacher's trained weights", after_step=keep if wanted else None
    )
    result.extras.update(train_rows=len(data.train), truncated_rows=data.train.truncated)
    summary = arm_summary("teacher", result, {})
    if accelerator.is_main_process:
        folder = ensure_writable_dir(output_dir)
        final = folder / "final_model"
        paths = {
            "final_model": final,
            **write_run_files(folder, "teacher", result, config.to_dict()),
        }
        summary = arm_summary("teacher", result, paths) | _checkpoint_paths(folder, save_steps)
        record = _record(model_name, data, config) | content
        last = result.rows[-1]
        with atomic_dir(final) as tmp:
            # fp32 on purpose: rounding W + dW to bf16 would bury a small dW in noise.
            accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
            save_hyperparameters(tmp, {**record, "run_key": key, "summary": summary})
            write_marker(tmp, marker(last.step, total, last.tokens, last.flops, model_name, key))
        drop_stale_checkpoints(folder, key)
        write_run_config(folder, "train-teacher", record, {"base_model": model_name})
    return summary


def _checkpoint_paths(folder: Path, steps: Sequence[int]) -> dict[str, Any]:
    """The summary's `checkpoints`: step -> folder of the requested early weights."""
    return {"checkpoints": {str(s): str(checkpoint_dir(folder, s)) for s in sorted(steps)}}


def _check_resumed_checkpoints(folder: Path, steps: Sequence[int], key: str) -> None:
    """A resumed run starts after its checkpoint's step: the requested steps up to there
    must have been kept by the interrupted run, or they would silently be missing."""
    from ..errors import InvalidOptionError
    from .resume_state import checkpoint_step

    done = checkpoint_step(folder / "checkpoints" / "teacher") or 0
    lost = [s for s in missing_checkpoints(folder, steps, key) if s <= done]
    if lost:
        raise InvalidOptionError(
            f"--save-steps {','.join(map(str, lost))}: the interrupted run resumes after step "
            f"{done} and kept no weights of step {lost[0]}",
            "drop --resume to train again from step 0, or leave those steps out of --save-steps",
        )


def _record(model_name: str, data: Any, config: TrainConfig) -> dict[str, Any]:
    return {
        "role": "teacher",
        "base_model": model_name,
        "train_data": str(data.train_path),
        "eval_data": str(data.eval_path) if data.eval_path else None,
        **config.to_dict(),
    }
