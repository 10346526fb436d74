"""Step 5 of the seed plan: compare the arms' training logs with each other and the teacher.

Every figure is computed once here, per run and then per arm over seeds; the
table, JSON, text/markdown reports and the plot all render this document. Only one
comparable group of runs is compared, each run once (`comparable.select_comparable`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StepLogError, SvdloraError
from ..files import is_utf8, printable
from ..training.init_registry import REFERENCE_INIT, flagged
from ..training.steplog import StepRow, read_step_log
from .comparable import Selection, arm_init, select_comparable
from .compute_matched import arm_flops, compute_matched, flops_warnings, run_flops
from .curve_stats import (
    area_under_curve,
    gap_recovered,
    improvement,
    oscillation,
    relative_gap,
    spread,
    steps_to_target,
    value_at_step,
)
from .grid_checks import eval_loss_warnings, grid_warnings, precision_warnings
from .protocol import protocol

LOG_NAME = re.compile(r"^training_log_(?P<name>.+)\.csv$")
SEEDED = re.compile(r"^(?P<arm>.+)_seed(?P<seed>\d+)$")
TARGET_FACTOR = 1.1
log = logging.getLogger("svdlora")
# From each run's stored summary (svdlora_run.json); runs from before MFU accounting lack them.
THROUGHPUT = ("tokens_per_s", "tflops", "mfu")
RUN_SUMMARY = (*THROUGHPUT, "flops_per_token", "peak_tflops", "peak_source")
FIGURES = (
    "initial_loss",
    "final_loss",
    "min_loss",
    "initial_eval_loss",
    "final_eval_loss",
    "steps_to_target",
    "tokens_to_target",
    "auc",
    "gap_to_teacher_pct",
    "improvement_over_random_pct",
    "recovered_start",
    "recovered_end",
    "oscillation",
    *THROUGHPUT,
)


@dataclass
class RunLog:
    """One training log with the arm and seed its file name encodes."""

    name: str
    arm: str
    seed: int | None
    path: Path
    rows: list[StepRow]
    record: dict[str, Any] = field(default_factory=dict)
    model_dir: Path | None = None

    @property
    def is_teacher(self) -> bool:
        return self.arm == "teacher"


def _read_run_record(path: Path) -> dict[str, Any]:
    """A run's svdlora_run.json; one cut off on its last line is ignored with a warning."""
    if not path.is_file():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SvdloraError(
            f"cannot read run record {path}: {exc}", "pass a run folder written by svdlora train"
        ) from exc
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.lineno >= max(len(text.rstrip().splitlines()), 1):
            log.warning(
                "%s line %d: ignored a run record cut off while being written (%s)",
                path,
                exc.lineno,
                exc.msg,
            )
            return {}
        raise StepLogError(
            f"run record {path} line {exc.lineno}: {exc.msg}",
            "the record is damaged there; rerun the training that wrote it, or remove the file",
        ) from exc
    if not isinstance(record, dict):
        raise StepLogError(
            f"run record {path} line 1: not a JSON object",
            "rerun the training that wrote it, or remove the file",
        )
    return record


def _load(path: Path) -> RunLog:
    if not is_utf8(str(path)):  # found on disk: its name goes into tables, JSON and plots
        raise SvdloraError(
            f"run log {printable(str(path))} has a name that is not valid UTF-8",
            "rename the folder or file to a UTF-8 name (e.g. with `mv`), then rerun compare",
        )
    match = LOG_NAME.match(path.name)
    if match is None:
        raise SvdloraError(
            f"{path} is not a training_log_<arm>.csv file", "pass the logs svdlora train writes"
        )
    name = match.group("name")
    seeded = SEEDED.match(name)
    arm, seed = (seeded.group("arm"), int(seeded.group("seed"))) if seeded else (name, None)
    try:
        rows = read_step_log(path)
    except (OSError, KeyError, ValueError) as exc:
        raise SvdloraError(
            f"cannot read training log {path}: {exc}", "pass a log written by svdlora"
        ) from exc
    if not rows:
        raise SvdloraError(f"training log {path} has no rows", "rerun the training")
    model_dir = path.parent / ("final_model" if name == "teacher" else f"final_model_{name}")
    record_file = model_dir / "svdlora_run.json"
    record = _read_run_record(record_file)
    if seed is None:
        seed = record.get("seed")
    return RunLog(name, arm, seed, path, rows, record, model_dir if model_dir.is_dir() else None)


def find_logs(
    run_dir: Path | None, logs: Iterable[Path] = (), teacher_model: str | None = None
) -> list[RunLog]:
    """training_log_*.csv in run_dir and its subfolders (two levels), plus explicit files.

    When no teacher log is among them, the one beside the teacher model's folder is used.
    """
    paths = [Path(p) for p in logs]
    if run_dir is not None:
        if not Path(run_dir).is_dir():
            raise SvdloraError(
                f"run folder {run_dir} not found", "pass the folder `svdlora train` wrote to"
            )
        for pattern in ("training_log_*.csv", "*/training_log_*.csv", "*/*/training_log_*.csv"):
            paths += sorted(Path(run_dir).glob(pattern))
    for p in paths:
        if not p.is_file():
            raise SvdloraError(f"training log {p} not found", "check the path given to --log")
    loaded: dict[Path, RunLog] = {}
    runs = []  # a file given twice stays twice: `select_comparable` reports it
    for p in paths:
        if p.resolve() not in loaded:
            loaded[p.resolve()] = _load(p)
        runs.append(loaded[p.resolve()])
    if teacher_model and not any(r.is_teacher for r in runs):
        candidate = Path(teacher_model).parent / "training_log_teacher.csv"
        if candidate.is_file():
            runs.append(_load(candidate))
    if not runs:
        raise SvdloraError(
            f"no training_log_*.csv found{' in ' + str(run_dir) if run_dir else ''}",
            "run `svdlora train` first, or pass logs with --log",
        )
    return sorted(
        runs, key=lambda r: (not r.is_teacher, r.arm != REFERENCE_INIT, r.arm, r.seed or 0)
    )


def _series(rows: Sequence[StepRow]) -> tuple[list[int], list[float]]:
    return [r.step for r in rows], [r.loss for r in rows]


def _evals(rows: Sequence[StepRow]) -> list[StepRow]:
    return [r for r in rows if r.eval_loss is not None]


def run_figures(
    run: RunLog, target: float | None, teacher: RunLog | None, random: RunLog | None
) -> dict[str, Any]:
    """Every per-run figure; `random` is the same-seed random arm (the base's losses at row 0)."""
    steps, losses = _series(run.rows)
    evals = _evals(run.rows)
    reached = steps_to_target(steps, losses, target) if target is not None else None
    teacher_final = teacher.rows[-1].loss if teacher else None
    teacher_eval = _evals(teacher.rows)[-1].eval_loss if teacher and _evals(teacher.rows) else None
    base_eval = random.rows[0].eval_loss if random else None
    final_eval = evals[-1].eval_loss if evals else None
    summary = run.record.get("summary")
    summary = summary if isinstance(summary, dict) else {}
    return {
        "initial_loss": losses[0],
        "final_loss": losses[-1],
        "min_loss": min(losses),
        "initial_eval_loss": run.rows[0].eval_loss,
        "final_eval_loss": final_eval,
        "steps": steps[-1],
        "tokens": run.rows[-1].tokens,
        "steps_to_target": reached,
        "tokens_to_target": value_at_step(steps, [r.tokens for r in run.rows], reached),
        "auc": area_under_curve(steps, losses),
        "gap_to_teacher_pct": None if run.is_teacher else relative_gap(losses[-1], teacher_final),
        "improvement_over_random_pct": (
            None
            if run.is_teacher or random is None
            else improvement(losses[-1], random.rows[-1].loss)
        ),
        "recovered_start": None
        if run.is_teacher
        else gap_recovered(run.rows[0].eval_loss, base_eval, teacher_eval),
        "recovered_end": None
        if run.is_teacher
        else gap_recovered(final_eval, base_eval, teacher_eval),
        "oscillation": oscillation(losses),
        "flops": run_flops(run),  # {training, init, teacher, total}
        **{key: summary.get(key) for key in RUN_SUMMARY},
    }


def compare_runs(runs: Sequence[RunLog], target_loss: float | None = None) -> dict[str, Any]:
    """Per-run figures, then mean / std / 95% CI per arm over seeds, of comparable runs only."""
    return compare_selection(select_comparable(runs), target_loss)


def compare_selection(selection: Selection, target_loss: float | None = None) -> dict[str, Any]:
    """`compare_runs` over a selection; what it set apart is in `set_apart` and `warnings`."""
    runs = selection.runs
    teacher = next((r for r in runs if r.is_teacher), None)
    if target_loss is not None:
        target, source = target_loss, "--target-loss"
    elif teacher is not None:
        target, source = (
            TARGET_FACTOR * teacher.rows[-1].loss,
            f"{TARGET_FACTOR} x teacher's final training loss",
        )
    else:
        target, source = None, "none (no teacher log and no --target-loss)"
    # The same-seed random run: its row 0 is the base's loss (any learning rate of a grid).
    randoms: dict[int | None, RunLog] = {}
    for r in runs:
        if REFERENCE_INIT in (r.arm, r.record.get("init")):
            randoms.setdefault(r.seed, r)
    fallback_random = next(iter(randoms.values()), None)
    per_run = []
    for run in runs:
        random = randoms.get(run.seed, fallback_random)
        per_run.append((run, run_figures(run, target, teacher, random)))
    arms: dict[str, list[tuple[RunLog, dict[str, Any]]]] = {}
    for run, figures in per_run:
        arms.setdefault(run.arm, []).append((run, figures))
    arm_docs = []
    for arm, items in arms.items():
        doc: dict[str, Any] = {
            "arm": arm,
            "seeds": [r.seed for r, _ in items],
            "n_runs": len(items),
        }
        record = items[0][0].record
        # svd@k (the teacher's checkpoint after k steps) is an init of its own here
        doc["init"] = arm_init(items[0][0])
        doc["learning_rate"] = record.get("learning_rate")
        for key in ("teacher_step", "teacher_steps_total"):
            doc[key] = record.get(key)
        spreads = {}
        for name in FIGURES:
            s = spread([f[name] for _, f in items])
            doc[name] = s.mean
            spreads[name] = asdict(s)
        doc["never_reached"] = (
            sum(f["steps_to_target"] is None for _, f in items) if target is not None else None
        )
        doc["spread"] = spreads
        doc["flops"] = arm_flops([f["flops"] for _, f in items])
        doc["runs"] = [
            {
                "name": r.name,
                "seed": r.seed,
                "log": str(r.path),
                "model_dir": str(r.model_dir) if r.model_dir else None,
                **f,
            }
            for r, f in items
        ]
        arm_docs.append(doc)
    fair = protocol(arm_docs)
    notes = eval_loss_warnings(runs)
    if fair["no_verdict"] and len(fair["grid"]) > 1 and not notes:
        notes.append(f"no verdict: {fair['no_verdict']}")
    notes += grid_warnings(fair) + flops_warnings(arm_docs) + precision_warnings(runs)
    for arm in arm_docs:  # each arm names its init's chosen rate and whether it is an edge
        entry = fair["grid"].get(arm["init"], {})
        arm["chosen_learning_rate"] = entry.get("chosen")
        arm["edge_of_grid"] = entry.get("edge_of_grid")
    return {
        "target_loss": target,
        "target_source": source,
        "recovered_basis": "eval loss: (L_base - L_arm) / (L_base - L_teacher); "
        "L_base is the random arm's step-0 eval loss, L_teacher the teacher's final one",
        "arms": arm_docs,
        "protocol": fair,
        "compute_matched": compute_matched(arm_docs, fair, runs),
        "set_apart": selection.set_apart,
        "warnings": [*selection.warnings, *notes],
    }


def curves_for_plot(runs: Sequence[RunLog]) -> dict[str, list[dict[str, list[float]]]]:
    """Per arm, each run's (step, loss) and (step, eval_loss) series."""
    out: dict[str, list[dict[str, list[float]]]] = {}
    for run in runs:
        evals = _evals(run.rows)
        out.setdefault(run.arm, []).append(
            {
                "steps": [r.step for r in run.rows],
                "loss": [r.loss for r in run.rows],
                "eval_steps": [r.step for r in evals],
                "eval_loss": [float(r.eval_loss) for r in evals if r.eval_loss is not None],
            }
        )
    return out


def first_set(values: Iterable[Any]) -> Any:
    """The first value that is set (not None, empty or zero)."""
    return next((v for v in values if v), None)


def attach_model_figures(
    doc: dict[str, Any],
    runs: Sequence[RunLog],
    base_model: str | None,
    teacher_model: str | None,
    cache: Any,
) -> list[str]:
    """Energy captured (SVD-family arms) and adapter geometry, when base and teacher are known."""
    from .geometry import adapter_geometry

    notes = []
    if not (base_model and teacher_model):
        return [
            "parameter distance and energy need --base-model and --teacher-model (or svdlora.toml)"
        ]
    adapters = {r.name: r.model_dir for r in runs if not r.is_teacher and r.model_dir is not None}
    geometry = adapter_geometry(base_model, teacher_model, adapters, cache) if adapters else {}
    energies: dict[int, float] = {}
    for arm in doc["arms"]:
        if arm["arm"] == "teacher":
            continue
        rank = first_set(r.record.get("lora_rank") for r in runs if r.arm == arm["arm"])
        if flagged(arm["init"], "needs_teacher") and rank:
            if rank not in energies:
                from ..spectra.svd_step import run_svd

                energies[rank] = run_svd(base_model, teacher_model, cache, rank=int(rank)).summary[
                    "total_energy"
                ]
            arm["energy_captured"] = energies[rank]
        else:
            arm["energy_captured"] = None
        per_run = [geometry[run["name"]] for run in arm["runs"] if run["name"] in geometry]
        for run in arm["runs"]:
            run["geometry"] = geometry.get(run["name"])
        for key in ("relative_distance", "overlap_left", "overlap_right"):
            s = spread([g[key] for g in per_run])
            arm[key] = s.mean
            arm["spread"][key] = asdict(s)
        arm["relative_distance_by_type"] = (
            per_run[0]["relative_distance_by_type"] if per_run else None
        )
    if not adapters:
        notes.append("no final_model_* adapters found next to the logs: no parameter distance")
    return notes
