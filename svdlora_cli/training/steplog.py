"""The seed's training_log_{name}.csv: one row per optimizer step, row 0 before any update.

The `flops` column (cumulative training FLOPs of the whole run, all processes) came later:
a log without it reads with flops None (unknown), never 0.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import StepLogError
from ..files import write_text

COLUMNS = ("step", "epoch", "loss", "lr", "grad_norm", "eval_loss", "tokens", "elapsed_s", "flops")
REQUIRED = ("step", "epoch", "loss")
log = logging.getLogger("svdlora")


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
    flops: float | None = None  # training FLOPs of steps 1..step (flops.py); None: unknown


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
        writer.writerow([(_whole if c == "flops" else _cell)(record[c]) for c in COLUMNS])
    return write_text(path, buffer.getvalue())


def _whole(value: float | None) -> str:
    """A FLOP count in full (every digit, no exponent): `_cell`'s 6 digits would round it."""
    if value is None or not math.isfinite(value):
        return ""
    return f"{value:.0f}"


def _number(record: dict[str, str], key: str) -> float | None:
    text = (record.get(key) or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{key} {text!r} is not a number") from None


def _required(record: dict[str, str], key: str) -> float:
    value = _number(record, key)
    if value is None:
        raise ValueError(f"{key} is empty")
    return value


def _row(header: list[str], cells: list[str]) -> StepRow:
    """One CSV line as a StepRow (ValueError says what is wrong with it)."""
    if any("\0" in cell for cell in cells):
        raise ValueError("it holds NUL bytes")
    if len(cells) != len(header):
        raise ValueError(f"it has {len(cells)} of {len(header)} fields")
    record = dict(zip(header, cells, strict=True))
    step = _required(record, "step")
    if step != int(step):
        raise ValueError(f"step {record['step']!r} is not a whole number")
    return StepRow(
        step=int(step),
        epoch=_required(record, "epoch"),
        loss=_required(record, "loss"),
        lr=_number(record, "lr"),
        grad_norm=_number(record, "grad_norm"),
        eval_loss=_number(record, "eval_loss"),
        tokens=int(_number(record, "tokens") or 0),
        elapsed_s=_number(record, "elapsed_s") or 0.0,
        flops=_number(record, "flops"),
    )


def read_step_log(path: Path) -> list[StepRow]:
    """Rows of a training log; empty cells become None.

    A malformed last line (a write cut off by a crash) is skipped with a warning naming
    the file and line; a malformed line before it is a StepLogError.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1)]
    lines = [(n, line) for n, line in lines if line.strip()]
    if not lines:
        return []
    (_, first), body = lines[0], lines[1:]
    header = [h.strip() for h in next(csv.reader([first]))]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise StepLogError(
            f"training log {path} line 1: the header lacks {', '.join(missing)}",
            "pass a training_log_*.csv written by svdlora train",
        )
    rows = []
    for i, (number, line) in enumerate(body):
        try:
            rows.append(_row(header, next(csv.reader([line]), [])))
        except (ValueError, csv.Error) as exc:
            if i == len(body) - 1:
                log.warning(
                    "%s line %d: skipped a partial last line (%s); the log was cut off "
                    "while being written",
                    path,
                    number,
                    exc,
                )
                break
            raise StepLogError(
                f"training log {path} line {number}: {exc}",
                "the log is damaged there; rerun the training that wrote it, or fix that line",
            ) from exc
    return rows
