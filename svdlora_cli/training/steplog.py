"""The seed's training_log_{name}.csv: one row per optimizer step, row 0 before any update."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..files import write_text

COLUMNS = ("step", "epoch", "loss", "lr", "grad_norm", "eval_loss", "tokens", "elapsed_s")


@dataclass
class StepRow:
    """Figures after `step` updates; loss is the step's training-batch loss before its update."""

    step: int
    epoch: float
    loss: float
    lr: float | None = None
    grad_norm: float | None = None
    eval_loss: float | None = None
    tokens: int = 0
    elapsed_s: float = 0.0


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_step_log(path: Path, rows: Sequence[StepRow]) -> Path:
    """Write the whole log atomically, so a reader never sees a partial file."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        record = asdict(row)
        writer.writerow([_cell(record[c]) for c in COLUMNS])
    return write_text(path, buffer.getvalue())


def _number(record: dict[str, str], key: str) -> float | None:
    text = record.get(key) or ""
    return float(text) if text else None


def read_step_log(path: Path) -> list[StepRow]:
    """Rows of a training log; empty cells become None."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [
            StepRow(
                step=int(record["step"]),
                epoch=float(record["epoch"]),
                loss=float(record["loss"]),
                lr=_number(record, "lr"),
                grad_norm=_number(record, "grad_norm"),
                eval_loss=_number(record, "eval_loss"),
                tokens=int(_number(record, "tokens") or 0),
                elapsed_s=_number(record, "elapsed_s") or 0.0,
            )
            for record in csv.DictReader(handle)
        ]
