"""The whole seed experiment in one call: teacher, dW, SVD, students, comparison, layer report.

Every step goes through the artifact cache or reuses a finished run with the
same inputs, so a second demo only recomputes what changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import ArtifactCache
from .models.builtin import SMOLLM2, TINY

StepFactory = Callable[[str], Any]


@dataclass
class DemoSettings:
    """Defaults sized for about 15 minutes on a 2-core CPU with SmolLM2-135M."""

    model: str = SMOLLM2
    name: str = "demo"
    root: Path = Path("svdlora-runs")
    output_dir: Path | None = None
    rank: int = 16
    inits: tuple[str, ...] = ("random", "svd", "subspace")
    teacher_epochs: int = 2
    student_epochs: int = 1
    teacher_lr: float = 5e-5
    student_lr: float = 2e-4
    batch_size: int = 4
    max_length: int = 384
    eval_every: int = 5
    eval_limit: int = 16
    generate_limit: int = 8
    max_new_tokens: int = 200
    seed: int = 0
    device: str = "auto"
    data_path: str | None = None
    eval_path: str | None = None
    quick: bool = False
    workspace: Path | None = field(default_factory=lambda: Path("svdlora.toml"))

    @classmethod
    def quick_settings(cls, **overrides: Any) -> DemoSettings:
        """A tiny model and short runs: the whole pipeline in well under 2 minutes."""
        base = {
            "model": TINY,
            "name": "quick",
            "teacher_epochs": 2,
            "student_epochs": 2,
            "teacher_lr": 3e-3,
            "student_lr": 3e-3,
            "max_length": 512,
            "eval_every": 10,
            "eval_limit": 16,
            "generate_limit": 4,
            "max_new_tokens": 24,
            "quick": True,
        }
        return cls(**{**base, **overrides})

    @property
    def folder(self) -> Path:
        """The run folder; a name can never point outside the runs root."""
        if self.output_dir is not None:
            return self.output_dir
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            from .errors import InvalidOptionError

            raise InvalidOptionError(
                f"--name {self.name!r} must be a plain folder name",
                "use letters, digits, '.', '_' and '-' (no '/' or '..')",
            )
        return self.root / self.name


@contextlib.contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[step] = round(time.perf_counter() - start, 2)


def run_demo(
    settings: DemoSettings,
    cache: ArtifactCache,
    step_bar: StepFactory | None = None,
    item_bar: StepFactory | None = None,
    announce: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run steps 1-5 of the seed plan plus the layer report; returns the summary document."""
    from .analysis.compare import (
        attach_accuracy,
        attach_model_figures,
        compare_runs,
        curves_for_plot,
        find_logs,
    )
    from .analysis.layers import layer_report
    from .artifacts import (
        write_compare_outputs,
        write_delta_outputs,
        write_layer_outputs,
        write_svd_outputs,
    )
    from .checkpoints import resolve_model_path
    from .extraction import run_delta, run_svd
    from .training.loop import TrainConfig
    from .training.student import base_plan, train_student
    from .training.teacher import train_teacher

    say = announce or (lambda _: None)
    bar = step_bar or (lambda _: contextlib.nullcontext(None))
    items = item_bar or (lambda _: contextlib.nullcontext(None))
    folder = settings.folder
    timings: dict[str, float] = {}
    common = {
        "batch_size": settings.batch_size,
        "max_length": settings.max_length,
        "seed": settings.seed,
        "eval_every": settings.eval_every,
        "eval_limit": settings.eval_limit,
        "device": settings.device,
    }

    with _timed(timings, "model"):
        say(f"[0/6] resolving the model {settings.model}")
        base = str(resolve_model_path(settings.model))
    teacher_dir = folder / "teacher_full_sft"
    with _timed(timings, "teacher"), bar("1/6 teacher (full SFT)") as update:
        say("[1/6] train-teacher: full-parameter SFT")
        config = TrainConfig(
            epochs=settings.teacher_epochs, learning_rate=settings.teacher_lr, **common
        )
        teacher = train_teacher(
            base,
            teacher_dir,
            config,
            settings.data_path,
            settings.eval_path,
            progress=update,
            reuse=True,
            memo=cache.memo,
        )
    teacher_model = str(teacher_dir / "final_model")
    svd_dir = folder / "svd_results"
    with _timed(timings, "delta"), items("2/6 dW") as update:
        say("[2/6] delta: dW = W_teacher - W_base")
        delta = run_delta(base, teacher_model, cache, progress=update)
        write_delta_outputs(delta, svd_dir, base, teacher_model)
    with _timed(timings, "svd"), items("3/6 SVD") as update:
        say(f"[3/6] svd --rank {settings.rank}")
        spectra = run_svd(
            base, teacher_model, cache, rank=settings.rank, method="exact", progress=update
        )
        svd_doc = write_svd_outputs(spectra, svd_dir, base, teacher_model)
    factors = spectra.factors("b")
    plan = base_plan(base, settings.rank, None, factors=factors)
    students = []
    train_dir = folder / "training_results"
    student_config = TrainConfig(
        epochs=settings.student_epochs, learning_rate=settings.student_lr, **common
    )
    with _timed(timings, "students"):
        for i, init in enumerate(settings.inits, start=1):
            say(f"[4/6] train --init {init} ({i}/{len(settings.inits)})")
            with bar(f"4/6 student {init}") as update:
                students.append(
                    train_student(
                        base,
                        init,
                        train_dir,
                        student_config,
                        plan,
                        factors,
                        init,
                        settings.data_path,
                        settings.eval_path,
                        progress=update,
                        reuse=True,
                        memo=cache.memo,
                    )
                )
    with _timed(timings, "compare"), items("5/6 generate") as update:
        say(f"[5/6] compare (greedy decoding on {settings.generate_limit} eval problems)")
        runs = find_logs(folder)
        comparison = compare_runs(runs)
        comparison["warnings"] = attach_model_figures(comparison, runs, base, teacher_model, cache)
        attach_accuracy(
            comparison,
            runs,
            base,
            teacher_model,
            settings.eval_path,
            settings.generate_limit,
            settings.max_new_tokens,
            update,
            cache,
        )
        write_compare_outputs(comparison, curves_for_plot(runs), folder)
    with _timed(timings, "layer_report"):
        say("[6/6] layer-report")
        layers = layer_report(
            base, teacher_model, cache, rank=settings.rank, method="exact", sort="layer"
        )
        layers = {"base_model": base, "tuned_model": teacher_model, **layers}
        write_layer_outputs(layers, svd_dir)
    if settings.workspace is not None:
        from .workspace import update_workspace

        update_workspace(
            settings.workspace,
            {"base_model": base, "teacher_model": teacher_model, "output_dir": str(folder)},
            {"svd": {"output_dir": str(svd_dir)}, "sweep": {"output_dir": str(svd_dir / "sweep")}},
        )
    return {
        "model": settings.model,
        "base_model": base,
        "run_dir": str(folder),
        "settings": {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(settings).items()
        },
        "timings_s": timings,
        "teacher": teacher,
        "students": students,
        "spectra": {
            k: svd_doc["summary"][k]
            for k in (
                "mean_energy",
                "total_energy",
                "mean_rank_90",
                "mean_effective_rank",
                "untargeted_share",
            )
        },
        "layers": {k: layers[k] for k in ("by_group",)},
        "comparison": comparison,
        "reading": reading(svd_doc["summary"], comparison, settings.rank),
        "artifacts": {
            "comparison_plot": comparison["artifacts"]["plot"],
            "comparison_report": comparison["artifacts"]["report"],
            "svd_plot": svd_doc["artifacts"]["plot"],
            "svd_report": svd_doc["artifacts"]["report"],
            "layer_heatmap": layers["artifacts"]["heatmap"],
        },
        "warnings": [*svd_doc["warnings"], *comparison.get("warnings", [])],
    }


def _low_rank_reading(total: float, rank: int) -> str:
    share = f"{100 * total:.0f}%"
    if total >= 0.85:
        return f"held: rank {rank} keeps {share} of dW's energy (the seed expected more than 85%)"
    if total >= 0.5:
        return (
            f"held only in part: rank {rank} keeps {share} of dW's energy, short of the "
            "seed's 85%, so dW is concentrated but not strictly low rank"
        )
    return f"did not hold: rank {rank} keeps only {share} of dW's energy"


def _speed_reading(svd: dict[str, Any], random: dict[str, Any]) -> str:
    mine, theirs = svd.get("steps_to_target"), random.get("steps_to_target")
    if mine is not None and theirs is not None:
        return f"it reached the target loss in {mine:.0f} steps against {theirs:.0f}"
    if mine is not None:
        return f"it reached the target loss in {mine:.0f} steps while random never did"
    if theirs is not None:
        return "it never reached the target loss while random did"
    return "neither arm reached the target loss"


def _control_reading(subspace: dict[str, Any] | None, random: dict[str, Any]) -> str:
    if subspace is None:
        return ""
    better = subspace["final_loss"] < random["final_loss"]
    verdict = "the directions alone help" if better else "the gain comes from the head start"
    return (
        f" The subspace control (the teacher's directions, zero start) ended "
        f"{'below' if better else 'above'} random ({subspace['final_loss']:.3f} vs "
        f"{random['final_loss']:.3f}), so {verdict}."
    )


def reading(spectra: dict[str, Any], comparison: dict[str, Any], rank: int) -> str:
    """A plain-language paragraph on whether the two hypotheses held in this run."""
    first = f"Hypothesis 1 (dW is low rank) {_low_rank_reading(spectra['total_energy'], rank)}."
    arms = {a["arm"]: a for a in comparison["arms"]}
    svd, random = arms.get("svd"), arms.get("random")
    if not (svd and random):
        return f"{first} Hypothesis 2 needs both a random and an svd arm."
    held = (
        svd["initial_loss"] < random["initial_loss"] and svd["final_loss"] <= random["final_loss"]
    )
    start = "lower" if svd["initial_loss"] < random["initial_loss"] else "no lower"
    end = "lower" if svd["final_loss"] < random["final_loss"] else "no lower"
    evals = svd.get("final_eval_loss"), random.get("final_eval_loss")
    eval_text = ""
    if evals[0] is not None and evals[1] is not None:
        side = "lower" if evals[0] < evals[1] else "higher"
        eval_text = f", with a {side} final eval loss ({evals[0]:.3f} vs {evals[1]:.3f})"
    recovered = svd.get("recovered_start")
    recovered_text = (
        ""
        if recovered is None
        else f" At step 0 the SVD start already recovers {100 * recovered:.0f}% of the "
        "base-to-teacher eval-loss gap."
    )
    return (
        f"{first} Hypothesis 2 (an SVD-initialised LoRA trains faster and ends closer to the "
        f"teacher) {'held' if held else 'did not hold'} in this run: the svd arm started {start} "
        f"({svd['initial_loss']:.3f} vs {random['initial_loss']:.3f}) and ended {end} "
        f"({svd['final_loss']:.3f} vs {random['final_loss']:.3f}){eval_text}; "
        f"{_speed_reading(svd, random)}.{recovered_text}"
        f"{_control_reading(arms.get('subspace'), random)} "
        "One run with one seed on a small model: treat these as indications, not results."
    )
