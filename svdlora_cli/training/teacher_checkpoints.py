"""The teacher's early checkpoints (`train-teacher --save-steps 1,5`): what the teacher
buys after k of its steps.

After optimizer step k the teacher's full weights go to `checkpoints/step_<k>/` beside
final_model/: a complete HF model folder (fp32 safetensors and the tokenizer), which `svd`
and `train --teacher-model` read like any teacher. Each folder, final_model/ included,
holds a marker, `svdlora_checkpoint.json`, naming the step, the run's total steps, the
real tokens and training FLOPs behind the weights, the base and the run's key. A student
whose SVD init reads a non-final checkpoint is the arm `svd@<k>`; from the final teacher
it stays `svd`.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import InvalidOptionError, SvdloraError

MARKER = "svdlora_checkpoint.json"
FORMAT = 1
_KEYS = ("step", "final", "steps_total", "tokens", "flops", "base_model", "run_key")


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    """The folder of the teacher's weights after `step` optimizer steps."""
    return Path(output_dir) / "checkpoints" / f"step_{int(step)}"


def check_save_steps(steps: Iterable[int], total: int) -> None:
    """Every requested step lies within the run (an Error before any training)."""
    beyond = sorted(s for s in steps if s > total)
    if beyond:
        listed = ",".join(map(str, beyond))
        raise InvalidOptionError(
            f"--save-steps {listed}: past the run's last step",
            f"the run has {total} steps: pass steps from 1 to {total} "
            "(or train longer with --epochs / --max-steps)",
        )


def marker(
    step: int,
    steps_total: int,
    tokens: int,
    flops: float | None,
    base_model: str,
    run_key: str | None,
) -> dict[str, Any]:
    """The marker of the weights after `step` of a run of `steps_total` steps."""
    return {
        "format": FORMAT,
        "step": int(step),
        "final": step == steps_total,
        "steps_total": int(steps_total),
        "tokens": int(tokens),
        "flops": None if flops is None else float(flops),
        "base_model": base_model,
        "run_key": run_key,
    }


def write_marker(folder: Path, record: Mapping[str, Any]) -> None:
    from ..files import write_json

    write_json(Path(folder) / MARKER, dict(record))


def save_checkpoint_folder(
    folder: Path, model: Any, state_dict: Any, tokenizer: Any, record: Mapping[str, Any]
) -> Path:
    """Model, tokenizer and marker as one folder, replaced in one rename."""
    from ..files import atomic_dir

    with atomic_dir(folder) as tmp:
        # fp32, as final_model: rounding W + dW to bf16 would bury a small dW in noise.
        model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        write_marker(tmp, record)
    return Path(folder)


def _invalid(path: Path, why: str) -> SvdloraError:
    return SvdloraError(
        f"{path} is not a valid svdlora checkpoint marker: {why}",
        "retrain the teacher (train-teacher --save-steps) to rewrite it, or delete the file "
        "to use the folder as a plain teacher",
    )


def teacher_checkpoint(path: str | Path | None) -> dict[str, Any] | None:
    """The checked marker of a teacher model folder; None for a folder without one (or a
    reference that is no local folder). A damaged marker is an SvdloraError."""
    if path is None:
        return None
    folder = Path(str(path)).expanduser()
    file = folder / MARKER
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _invalid(file, f"unreadable ({exc})") from None
    if not isinstance(record, dict) or any(k not in record for k in _KEYS):
        raise _invalid(file, f"it must be a JSON object with {', '.join(_KEYS)}")
    step, total, tokens = record["step"], record["steps_total"], record["tokens"]
    whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (step, total, tokens))
    if not whole or not 1 <= step <= total or tokens < 0:
        raise _invalid(
            file, "step, steps_total and tokens must be whole numbers, 1 <= step <= steps_total"
        )
    if not isinstance(record["final"], bool) or record["final"] != (step == total):
        raise _invalid(file, "final must be true exactly when step equals steps_total")
    flops = record["flops"]
    if flops is not None and not (
        isinstance(flops, (int, float)) and math.isfinite(flops) and flops >= 0
    ):
        raise _invalid(file, "flops must be a non-negative number or null")
    if not isinstance(record["base_model"], str) or not isinstance(
        record["run_key"], (str, type(None))
    ):
        raise _invalid(file, "base_model must be text and run_key text or null")
    return {**record, "path": str(folder.resolve())}


def missing_checkpoints(output_dir: Path, steps: Iterable[int], run_key: str | None) -> list[int]:
    """The requested steps without a checkpoint of this run (same run key) on disk."""
    missing = []
    for step in steps:
        try:
            found = teacher_checkpoint(checkpoint_dir(output_dir, step))
        except SvdloraError:
            found = None
        if found is None or found["step"] != step or found["run_key"] != run_key:
            missing.append(step)
    return missing


def drop_stale_checkpoints(output_dir: Path, run_key: str | None) -> list[Path]:
    """Remove the step folders another run left (their marker's run key differs): the
    final_model beside them is no longer the one they led to."""
    removed = []
    for folder in sorted((Path(output_dir) / "checkpoints").glob("step_*")):
        try:
            found = teacher_checkpoint(folder)
        except SvdloraError:
            continue  # damaged: leave it for the user
        if found is not None and found["run_key"] != run_key:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def checkpoint_label(init: str, teacher: Mapping[str, Any] | None) -> str:
    """`svd@5` for an init that reads the teacher's checkpoint after step 5; the init itself
    for the final teacher, a teacher without marker, or an init that reads no teacher."""
    from .init_registry import get_init

    if teacher is None or teacher["final"] or not get_init(init).needs_teacher:
        return init
    return f"{init}@{teacher['step']}"


def teacher_fields(init: str, teacher: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run record's and summary's teacher fields: the arm's label and the step, run
    length, tokens and FLOPs of the teacher weights its init read (None where unknown)."""
    from .init_registry import get_init

    read = teacher if teacher is not None and get_init(init).needs_teacher else None
    return {
        "init_label": checkpoint_label(init, read),
        **{
            f"teacher_{k}": read[k] if read is not None else None
            for k in ("step", "steps_total", "tokens", "flops")
        },
    }


def teacher_identity(teacher: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What a student's run key takes from the teacher checkpoint it reads."""
    if teacher is None:
        return None
    return {k: teacher[k] for k in ("step", "steps_total", "final", "run_key")}


def factors_teacher(
    svd_factors: str | None, teacher_model: str | None, memo: Any = None
) -> tuple[dict[str, Any] | None, list[str]]:
    """The marker of the teacher whose SVD the inits read, and warnings: `--svd-factors`
    records the folder it was made from (trusted only while that folder still holds the
    weights it fingerprinted), else `--teacher-model`'s folder. None: no marker."""
    from ..errors import ModelNotFoundError
    from ..models.refs import resolve_model_path

    if svd_factors:
        from safetensors import safe_open

        with safe_open(str(svd_factors), framework="pt") as handle:
            meta = handle.metadata() or {}
        source = meta.get("tuned_model") or None
        if source is None or not Path(source).expanduser().is_dir():
            return None, []
        found = teacher_checkpoint(source)
        recorded = meta.get("tuned_fingerprint", "")
        if found is not None and recorded:
            from ..models.checkpoints import fingerprint, open_checkpoint

            if fingerprint(open_checkpoint(source), memo) != recorded:
                return None, [
                    f"the teacher folder {source} that {svd_factors} was made from holds other "
                    "weights now: the SVD arms are not labelled with its checkpoint step"
                ]
        return found, []
    if teacher_model:
        try:
            return teacher_checkpoint(resolve_model_path(teacher_model)), []
        except ModelNotFoundError:
            return None, []
    return None, []


def init_label(record: dict[str, Any]) -> str:
    """A run's arm label: `svd@5` for an SVD init read from the teacher's checkpoint after
    step 5 (its `init_label`), else its `init` (records from before labels have only it)."""
    return str(record.get("init_label") or record["init"])
