"""The whole seed experiment in one call: teacher, dW, SVD, students, comparison, layer report.

It composes the same workflows as the single commands, so each step writes the
same bytes as its command would with the same options. Every step goes through
the artifact cache or reuses a finished run with the same inputs, so a second
demo only recomputes what changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..models.builtin import SMOLLM2, TINY
from .common import CacheOptions, Document, Hooks, cache_session, same_named
from .flags import check, nested, option
from .protocols import PROTOCOLS
from .vocabulary import (
    BASE_MODEL,
    BATCH_SIZE,
    DEVICE,
    GENERATE_LIMIT,
    INIT,
    LEARNING_RATES,
    MAX_LENGTH,
    OUTPUT_DIR,
    RANK,
    SAVE_STEPS,
    SEEDS,
    check_learning_rate,
    check_rank,
    init_help,
)

if TYPE_CHECKING:
    from ..store.cache import ArtifactCache


@dataclass
class DemoSettings:
    """Defaults sized for about 13 minutes on a 2-core CPU with SmolLM2-135M."""

    base_model: str = BASE_MODEL.field(
        SMOLLM2,
        help="Base model: smollm2-135m (the default; tiny with --quick), an HF folder or a "
        "cached hub id.",
        aliases=(*BASE_MODEL.aliases, "--model"),
    )
    name: str = option(
        "demo", help="Run name: outputs go to ./svdlora-runs/NAME (default: demo; quick)."
    )
    quick: bool = option(False, help="Tiny model, short runs: a smoke test.")
    root: Path = Path("svdlora-runs")
    output_dir: Path | None = OUTPUT_DIR.field(
        None, help="Run folder (default: ./svdlora-runs/NAME)."
    )
    rank: int = RANK.field(
        16, help="Rank r: the LoRA rank and the SVD truncation rank (default: 16)."
    )
    protocol: str = option(
        "small",
        help="small (the default): random/svd/pissa x 2 learning rates x 2 seeds, 12 steps "
        "each (about 13 min on 2 CPU cores); medium: random/pissa/lora-ga/lora-one/svd@1/svd "
        "x 3 learning rates x 3 seeds, students as long as the teacher (about an hour); "
        "full: every init, svd@1 and svd@5 x 5 learning rates x 3 seeds.",
    )
    inits: tuple[str, ...] = INIT.field(
        PROTOCOLS["small"]["inits"],
        help=lambda: f"{init_help().rstrip()} Default: the protocol's.",
        aliases=("--inits",),
    )
    learning_rates: tuple[float, ...] = LEARNING_RATES.field(
        PROTOCOLS["small"]["learning_rates"],
        help="The students' learning-rate grid (default: the protocol's).",
    )
    seeds: tuple[int, ...] = SEEDS.field(
        PROTOCOLS["small"]["seeds"], help="The students' seeds (default: the protocol's)."
    )
    save_steps: tuple[int, ...] = SAVE_STEPS.field(
        (),
        help="Keep the teacher's checkpoints after these steps; each gives an svd@k arm per "
        "teacher-reading init (default: the protocol's).",
    )
    student_max_steps: int | None = PROTOCOLS["small"]["student_max_steps"]
    teacher_epochs: int = option(2, help="Teacher epochs (default: the protocol's).")
    student_epochs: int = option(1, help="Student epochs (default: the protocol's).")
    teacher_lr: float = 5e-5
    batch_size: int = BATCH_SIZE.field(4, help="Examples per micro-batch (default: 4).")
    max_length: int = MAX_LENGTH.field(
        384, help="Tokens per example, longer rows are cut (default: the protocol's)."
    )
    eval_every: int = 5
    eval_limit: int = 16
    generate_limit: int = GENERATE_LIMIT.field(
        8, help="Eval problems greedy-decoded for exact-match accuracy (default: the protocol's)."
    )
    max_new_tokens: int = 200
    seed: int = 0
    device: str = DEVICE.field("auto", help="Device: auto (the default), cpu, cuda or cuda:N.")
    train_data: str | None = None
    eval_data: str | None = None
    workspace: Path | None = field(default_factory=lambda: Path("svdlora.toml"))
    cache: CacheOptions = nested(CacheOptions, "no_cache", factory=CacheOptions)

    @classmethod
    def chosen(cls, quick: bool = False, protocol: str = "small", **given: Any) -> DemoSettings:
        """What a command line chose: the quick run's or the protocol's settings, then the
        options it gave."""
        if quick:
            return cls.quick_settings(**given)
        return cls.for_protocol(protocol, **given)

    @classmethod
    def for_protocol(cls, protocol: str, **overrides: Any) -> DemoSettings:
        """The settings of a named protocol (small or full), then the overrides."""
        if protocol not in PROTOCOLS:
            from ..errors import InvalidOptionError

            raise InvalidOptionError(
                f"unknown --protocol {protocol!r}", f"use one of: {', '.join(PROTOCOLS)}"
            )
        return cls(**{"protocol": protocol, **PROTOCOLS[protocol], **overrides})

    @classmethod
    def quick_settings(cls, **overrides: Any) -> DemoSettings:
        """A tiny model and short runs (one learning rate, one seed): the whole pipeline in
        well under 2 minutes."""
        base = {
            "base_model": TINY,
            "name": "quick",
            "protocol": "quick",
            "inits": ("random", "svd", "subspace"),
            "learning_rates": (3e-3,),
            "seeds": (0,),
            "student_max_steps": None,
            "teacher_epochs": 2,
            "student_epochs": 2,
            "teacher_lr": 3e-3,
            "max_length": 512,
            "eval_every": 10,
            "eval_limit": 16,
            "generate_limit": 4,
            "max_new_tokens": 24,
            "quick": True,
        }
        return cls(**{**base, **overrides})

    @property
    def teacher_readers(self) -> tuple[str, ...]:
        """The inits that read the teacher's SVD: each gets an arm per saved teacher step."""
        from ..training.init_registry import flagged

        return tuple(i for i in self.inits if flagged(i, "needs_teacher"))

    @property
    def arms(self) -> tuple[str, ...]:
        """Every student arm's label: the inits, then `svd@k` per saved teacher step."""
        early = (f"{i}@{k}" for k in self.save_steps for i in self.teacher_readers)
        return (*self.inits, *early)

    @property
    def student_runs(self) -> int:
        return len(self.arms) * len(self.learning_rates) * len(self.seeds)

    @property
    def folder(self) -> Path:
        """The run folder; a name can never point outside the runs root."""
        if self.output_dir is not None:
            return self.output_dir
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            from ..errors import InvalidOptionError

            raise InvalidOptionError(
                f"--name {self.name!r} must be a plain folder name",
                "use letters, digits, '.', '_' and '-' (no '/' or '..')",
            )
        return self.root / self.name

    def validate(self) -> None:
        """Every figure checked before the first step, not after the teacher has trained."""
        from ..training.init_registry import get_init
        from .compare import check_generate_limit

        check_rank(self.rank)
        for init in self.inits:
            get_init(init)  # registered, or an error that lists the registered inits
        check_generate_limit(self.generate_limit)
        for lr in self.learning_rates:
            check_learning_rate(lr)
        self.train_config(self.teacher_epochs, self.teacher_lr).validate()
        for lr in self.learning_rates:
            self.train_config(self.student_epochs, lr, self.student_max_steps).validate()
        check(
            len(self.learning_rates) < 2 or bool(self.eval_data) or not self.train_data,
            f"the demo's learning-rate grid needs eval rows to choose among its rates, but "
            f"--train-data {self.train_data} comes without --eval-data",
            "pass --eval-data FILE with held-out rows (or a single --learning-rates value)",
        )

    def train_config(self, epochs: int, learning_rate: float, max_steps: int | None = None) -> Any:
        from ..training.config import TrainConfig

        # batch_size, max_length, seed, eval_every, eval_limit and device: the same names
        shared = same_named(TrainConfig, self)
        return TrainConfig(
            epochs=epochs, learning_rate=learning_rate, max_steps=max_steps, **shared
        )


@contextlib.contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[step] = round(time.perf_counter() - start, 2)


def _numbered(hooks: Hooks, number: str) -> Hooks:
    """The same hooks with the step number in front of every bar's label."""
    return Hooks(
        items=lambda label: hooks.items(f"{number} {label}"),
        steps=lambda label: hooks.steps(f"{number} {label}"),
        announce=hooks.announce,
    )


def run(settings: DemoSettings, hooks: Hooks | None = None) -> Document:
    """Steps 1-5 of the seed plan plus the layer report; writes demo_summary.json."""
    from ..files import check_writable_dir, write_json

    settings.validate()
    check_writable_dir(settings.folder)
    with cache_session(settings.cache, None) as cache:
        doc = _steps(settings, hooks or Hooks(), cache)
    doc["artifacts"]["summary"] = str(write_json(settings.folder / "demo_summary.json", doc))
    return doc


def _steps(settings: DemoSettings, hooks: Hooks, cache: ArtifactCache) -> Document:
    from ..analysis.plain_verdict import reading
    from ..models.refs import resolve_model_path
    from ..training.teacher_checkpoints import checkpoint_dir
    from . import compare, delta, layer_report, svd, train, train_teacher

    say = hooks.announce
    folder = settings.folder
    timings: dict[str, float] = {}
    with _timed(timings, "model"):
        say(f"[0/6] resolving the model {settings.base_model}")
        base = str(resolve_model_path(settings.base_model))
    teacher_dir = folder / "teacher_full_sft"
    with _timed(timings, "teacher"):
        say("[1/6] train-teacher: full-parameter SFT")
        teacher_options = train_teacher.TeacherOptions(
            base_model=base,
            config=settings.train_config(settings.teacher_epochs, settings.teacher_lr),
            train_data=settings.train_data,
            eval_data=settings.eval_data,
            output_dir=teacher_dir,
            save_steps=settings.save_steps,
            reuse=True,
        )
        teacher = train_teacher.run(teacher_options, _numbered(hooks, "1/6"), cache)["arms"][0]
    teacher_model = str(teacher_dir / "final_model")
    svd_dir = folder / "svd_results"
    pair = {"base_model": base, "teacher_model": teacher_model, "output_dir": svd_dir}
    with _timed(timings, "delta"):
        say("[2/6] delta: dW = W_teacher - W_base")
        delta.run(delta.DeltaOptions(**pair), _numbered(hooks, "2/6"), cache)
    with _timed(timings, "svd"):
        say(f"[3/6] svd --rank {settings.rank}")
        svd_options = svd.SvdOptions(**pair, rank=settings.rank, method="exact")
        svd_doc = svd.run(svd_options, _numbered(hooks, "3/6"), cache)
        assert svd_doc is not None  # the demo runs in one process
        early_factors = {}  # teacher step -> the factors of its checkpoint's dW
        for step in settings.save_steps if settings.teacher_readers else ():
            say(f"[3/6] svd --rank {settings.rank} of the teacher after {step} steps")
            early = svd.SvdOptions(
                base_model=base,
                teacher_model=str(checkpoint_dir(teacher_dir, step)),
                output_dir=folder / f"svd_results_step{step}",
                rank=settings.rank,
                method="exact",
            )
            early_doc = svd.run(early, _numbered(hooks, "3/6"), cache)
            assert early_doc is not None
            early_factors[step] = early_doc["artifacts"]["factors"]
    with _timed(timings, "students"):
        train_options = train.TrainOptions(
            base_model=base,
            config=settings.train_config(
                settings.student_epochs, settings.learning_rates[0], settings.student_max_steps
            ),
            inits=settings.inits,
            seeds=settings.seeds,
            learning_rates=settings.learning_rates,
            rank=settings.rank,
            svd_factors=svd_doc["artifacts"]["factors"],
            train_data=settings.train_data,
            eval_data=settings.eval_data,
            output_dir=folder / "training_results",
            reuse=True,
        )
        say(
            f"[4/6] train: {settings.student_runs} runs (inits {','.join(settings.arms)} x "
            f"learning rates {','.join(f'{lr:g}' for lr in settings.learning_rates)} x seeds "
            f"{','.join(map(str, settings.seeds))})"
        )
        students = train.run(train_options, _numbered(hooks, "4/6"), cache)["arms"]
        readers = settings.teacher_readers
        for step, factors in early_factors.items():
            early_train = dataclasses.replace(train_options, inits=readers, svd_factors=factors)
            students += train.run(early_train, _numbered(hooks, f"4/6 @{step}"), cache)["arms"]
    with _timed(timings, "compare"):
        say(f"[5/6] compare (greedy decoding on {settings.generate_limit} eval problems)")
        compare_options = compare.CompareOptions(
            run_dir=folder,
            base_model=base,
            teacher_model=teacher_model,
            generate=True,
            generate_limit=settings.generate_limit,
            eval_data=settings.eval_data,
            max_new_tokens=settings.max_new_tokens,
            device=settings.device,
        )
        comparison = compare.run(compare_options, _numbered(hooks, "5/6"), cache)
        assert comparison is not None
    with _timed(timings, "layer_report"):
        say("[6/6] layer-report")
        layer_options = layer_report.LayerReportOptions(**pair, rank=settings.rank, method="exact")
        layers = layer_report.run(layer_options, _numbered(hooks, "6/6"), cache)
        assert layers is not None
    if settings.workspace is not None:
        from ..workspace import update_workspace

        update_workspace(
            settings.workspace,
            {"base_model": base, "teacher_model": teacher_model, "output_dir": str(folder)},
            {"svd": {"output_dir": str(svd_dir)}, "sweep": {"output_dir": str(svd_dir / "sweep")}},
        )
    return {
        "model": settings.base_model,
        "base_model": base,
        "run_dir": str(folder),
        "settings": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in dataclasses.asdict(settings).items()
            if k != "cache"
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
