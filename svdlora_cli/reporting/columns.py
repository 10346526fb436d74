"""One column specification per report, shared by the rich tables and the text reports.

Each figure's header and format are defined here once. `tables.py` turns a
column list into a rich table, `text.py` and `compare_views.py` into aligned
text or markdown, so a figure reads the same in the terminal and in the files.
Nothing here imports rich.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Align = Literal["left", "right"]
Record = Mapping[str, Any]

BLOCKS = "▁▂▃▄▅▆▇█"


def pct(
    value: float | None,
    digits: int = 1,
    *,
    signed: bool = False,
    significant: bool = False,
    unit: str = "%",
) -> str:
    """A fraction as a percentage (0.1234 -> '12.3%'); '-' when it is missing.

    `digits` counts decimals, or significant digits with `significant=True` (for
    relative changes, which span orders of magnitude). `signed` always shows the
    sign; `unit=" pp"` marks a difference of two percentages.
    """
    if value is None:
        return "-"
    spec = f"{'+' if signed else ''}.{digits}{'g' if significant else 'f'}"
    return f"{100 * value:{spec}}{unit}"


def rel_pct(value: float | None) -> str:
    """A relative change: three significant digits, since it can be 0.0012% or 40%."""
    return pct(value, 3, significant=True)


def fixed(digits: int) -> Callable[[Any], str]:
    """A number with `digits` decimals; '-' when missing."""
    return lambda v: "-" if v is None else f"{v:.{digits}f}"


def general(digits: int) -> Callable[[Any], str]:
    """A number with `digits` significant digits; '-' when missing."""
    return lambda v: "-" if v is None else f"{v:.{digits}g}"


def rate(value: float | None) -> str:
    """A rate such as TFLOP/s: whole numbers from 100 up, else three significant digits."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def flop_count(value: float | None) -> str:
    """A FLOP count in scientific notation, three significant digits: 1.23e+15."""
    return "-" if value is None else f"{value:.3g}"


def count(value: Any) -> str:
    return "-" if value is None else str(value)


def plain(value: Any) -> str:
    return "" if value is None else str(value)


def thousands(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def shape(value: Sequence[int]) -> str:
    return "x".join(map(str, value))


def loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def sparkline(values: Sequence[float], width: int = 16) -> str:
    """Unicode sparkline of the leading singular values, scaled by the largest."""
    head = [float(v) for v in values[:width]]
    if not head or head[0] <= 0:
        return "·" * min(width, max(1, len(head)))
    top = head[0]
    return "".join(BLOCKS[min(len(BLOCKS) - 1, round(v / top * (len(BLOCKS) - 1)))] for v in head)


def energy_style(value: float | None) -> str:
    """rich style name for an energy fraction: green >= 90%, yellow >= 50%, else red."""
    if value is None:
        return ""
    return "green" if value >= 0.9 else "yellow" if value >= 0.5 else "red"


@dataclass(frozen=True)
class Column:
    """One figure of a record: its header, where it comes from and how it is written."""

    header: str
    key: str
    format: Callable[[Any], str] = plain
    align: Align = "right"
    get: Callable[[Record], Any] | None = None  # defaults to record.get(key)
    style: Callable[[Any], str] | None = None  # rich style name of the value (tables only)
    lower_is_better: bool = False  # for metric rows compared across arms

    def value(self, record: Record) -> Any:
        return self.get(record) if self.get is not None else record.get(self.key)

    def cell(self, record: Record) -> str:
        return self.format(self.value(record))


def headers(columns: Sequence[Column]) -> list[str]:
    return [c.header for c in columns]


def text_rows(columns: Sequence[Column], records: Iterable[Record]) -> list[list[str]]:
    """The header row, then one row of formatted cells per record."""
    return [headers(columns), *([c.cell(r) for c in columns] for r in records)]


def named(groups: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """{name: stats} as records with a 'name' field (the aggregates by type and group)."""
    return [{"name": name, **stats} for name, stats in groups.items()]


# Figures shared by several reports.
NAME = Column("name", "name", align="left")
MODULE = Column("module", "name", align="left")
TENSOR = Column("tensor", "name", align="left")
KIND = Column("kind", "kind", align="left")
SHAPE = Column("shape", "shape", shape)
COUNT = Column("count", "count", count)
RANK = Column("rank", "rank", count)
ENERGY = Column("energy", "energy", pct, style=energy_style)
REL_ERR = Column("rel err", "rel_error", pct)
EFF_RANK = Column("eff rank", "effective_rank", fixed(1))
STABLE = Column("stable", "stable_rank", fixed(2))
R50, R90, R95, R99 = (Column(f"r{p}", f"rank_{p}", count) for p in (50, 90, 95, 99))
SPECTRUM = Column("spectrum (top 16)", "singular_values", sparkline, align="left")
DELTA_NORM = Column("||dW||", "delta_norm", general(4))
BASE_NORM = Column("||W||", "base_norm", general(4))
REL_CHANGE = Column("rel change", "rel_change", rel_pct)
MAX_ABS = Column("max |dW|", "max_abs", general(3))
SHARE_OF_TOTAL = Column("share of ||dW||²", "share_of_total", pct)
SHARE = Column("share", "share", pct)
MEAN_ENERGY = Column("mean energy", "mean_energy", pct)
TOTAL_ENERGY = Column("total energy", "total_energy", pct)
MEAN_REL_ERR = Column("mean rel err", "mean_rel_error", pct)
MEAN_EFF_RANK = Column("mean eff rank", "mean_effective_rank", fixed(1))
MEAN_R90 = Column("mean r90", "mean_rank_90", fixed(1))
INTRUDERS = Column("intruders", "intruders", count)

# svd: totals (table footer), summary (report), per module, aggregates (report).
OUTSIDE_TARGETS = Column("outside targets", "untargeted_share", pct)
SVD_TOTALS = (MEAN_ENERGY, TOTAL_ENERGY, OUTSIDE_TARGETS)
SVD_SUMMARY_REPORT = (
    Column("mean energy captured", "mean_energy", pct),
    Column("total energy captured", "total_energy", pct),
    Column("lowest module energy", "min_energy", pct),
    Column("mean relative error", "mean_rel_error", pct),
    Column("mean effective rank", "mean_effective_rank", EFF_RANK.format),
    Column("mean stable rank", "mean_stable_rank", STABLE.format),
    Column("mean rank for 90% energy", "mean_rank_90", MEAN_R90.format),
    Column("unchanged targets (dW = 0)", "zero_modules", count),
    Column("randomized (certified) modules", "randomized_modules", count),
    Column("worst certified energy gap", "worst_energy_gap", lambda v: pct(v, 4)),
    Column("most power iterations", "max_power_iterations", count),
)
SVD_MODULES_TABLE = (MODULE, SHAPE, RANK, ENERGY, REL_ERR, EFF_RANK, R90, SPECTRUM)
SVD_MODULES_REPORT = (MODULE, SHAPE, RANK, ENERGY, REL_ERR, EFF_RANK, STABLE, R50, R90, R95, R99)
SVD_TYPES_REPORT = (
    Column("type", "name", align="left"),
    COUNT,
    MEAN_ENERGY,
    TOTAL_ENERGY,
    MEAN_REL_ERR,
    MEAN_EFF_RANK,
)
SVD_GROUPS_REPORT = (
    Column("group", "name", align="left"),
    COUNT,
    MEAN_ENERGY,
    TOTAL_ENERGY,
    MEAN_R90,
)

# delta (and the untargeted tensors of svd): totals, aggregates, targets, untargeted tensors.
DELTA_TOTALS = (
    Column("total ||dW||", "total_delta_norm", general(6)),
    Column("on targets", "targeted_share", pct),
    Column("elsewhere", "untargeted_share", pct),
)
DELTA_GROUPS = (NAME, COUNT, DELTA_NORM, REL_CHANGE, MAX_ABS, SHARE_OF_TOTAL)
DELTA_TARGETS_REPORT = (TENSOR, SHAPE, BASE_NORM, DELTA_NORM, REL_CHANGE, MAX_ABS)
UNTARGETED = (TENSOR, KIND, DELTA_NORM, REL_CHANGE)


def untargeted_share(total_delta_norm: float) -> Column:
    """A tensor's share of the model's total ||dW||^2 (the untargeted table's last column)."""
    total_sq = total_delta_norm**2
    return Column(
        SHARE_OF_TOTAL.header,
        "delta_sq",
        pct,
        get=lambda r: r["delta_sq"] / total_sq if total_sq else 0.0,
    )


# layer-report: per module and aggregates.
LAYER_MODULES = (MODULE, DELTA_NORM, REL_CHANGE, ENERGY, R90, R95, R99, EFF_RANK, STABLE, SHARE)
LAYER_GROUPS = (NAME, COUNT, DELTA_NORM, REL_CHANGE, ENERGY, MEAN_R90, MEAN_EFF_RANK, SHARE)

# sweep: one row per rank, then the total energy of each module type.
SWEEP = (
    RANK,
    Column("params", "adapter_parameters", thousands),
    TOTAL_ENERGY,
    MEAN_ENERGY,
    MEAN_REL_ERR,
)


def module_type_energy(kind: str) -> Column:
    """Total energy of one module type at a swept rank."""
    return Column(kind, kind, pct, get=lambda r: r["by_module_type"][kind]["total_energy"])


# training and the sweep's rank study: one row per arm.
ARM = Column("arm", "name", align="left")
INITIAL_LOSS = Column("initial loss", "initial_loss", loss)
FINAL_LOSS = Column("final loss", "final_loss", loss)
FINAL_EVAL_LOSS = Column("final eval loss", "final_eval_loss", loss)
# Throughput of real tokens; TFLOP/s and MFU (share of the device's peak) count model FLOPs.
TOKENS_PER_S = Column("tokens/s", "tokens_per_s", fixed(0))
TFLOPS = Column("TFLOP/s", "tflops", rate)
MFU = Column("MFU", "mfu", pct)
TRAINING = (
    ARM,
    INITIAL_LOSS,
    FINAL_LOSS,
    Column("min loss", "min_loss", loss),
    Column("eval start", "initial_eval_loss", loss),
    Column("eval end", "final_eval_loss", loss),
    Column("steps", "steps", count),
    TOKENS_PER_S,
    TFLOPS,
    MFU,
)
RANK_STUDY = (ARM, INITIAL_LOSS, FINAL_LOSS, FINAL_EVAL_LOSS)

CACHE_ENTRIES = (
    *(Column(key, key, align="left") for key in ("kind", "tensor", "k", "method", "bytes")),
    Column("key", "key", lambda v: v[:12], align="left"),
)


# compare: the seed's table has one row per metric and one column per arm.
def _steps(arm: Record) -> str:
    value = arm.get("steps_to_target")
    never = arm.get("never_reached") or 0
    if value is None:
        return "never" if never else "-"
    text = f"{value:.0f}" if arm["n_runs"] == 1 else f"{value:.1f}"
    return text + (f" ({never} never)" if never else "")


def _metric(header: str, key: str, fmt: Callable[[Any], str], lower: bool) -> Column:
    return Column(header, key, fmt, lower_is_better=lower)


SEED_METRICS = (
    _metric("Initial loss", "initial_loss", loss, True),
    _metric("Final loss", "final_loss", loss, True),
    _metric("Final eval loss", "final_eval_loss", loss, True),
    Column("Steps to target", "steps_to_target", _steps, get=lambda a: a, lower_is_better=True),
    _metric("Energy captured", "energy_captured", pct, False),
    _metric("Gap recovered at start", "recovered_start", pct, False),
    _metric("Gap recovered at end", "recovered_end", pct, False),
    _metric("Distance to teacher", "relative_distance", pct, True),
    _metric("Accuracy (exact match)", "accuracy", pct, False),
    _metric("Tokens/s", TOKENS_PER_S.key, TOKENS_PER_S.format, False),
    _metric("TFLOP/s", TFLOPS.key, TFLOPS.format, False),
    _metric("MFU", MFU.key, MFU.format, False),
)


def _with_spread(key: str) -> Callable[[Record], str]:
    """'mean ± std' over an arm's seeds; the mean alone for a single run."""

    def get(arm: Record) -> str:
        std = arm["spread"].get(key, {}).get("std")
        return loss(arm.get(key)) + ("" if std is None else f" ± {loss(std)}")

    return get


def _percent_gap(value: float | None) -> str:
    """gap_to_teacher_pct is stored in percent already."""
    return pct(None if value is None else value / 100, signed=True)


COMPARE_ARMS = (
    Column("arm", "arm", align="left"),
    Column("runs", "n_runs", count),
    *(
        Column(header, key, get=_with_spread(key))
        for header, key in (
            ("initial", "initial_loss"),
            ("final", "final_loss"),
            ("min", "min_loss"),
            ("eval end", "final_eval_loss"),
        )
    ),
    Column("AUC", "auc", fixed(2)),
    Column("gap to teacher", "gap_to_teacher_pct", _percent_gap),
    Column("oscillation", "oscillation", fixed(4)),
    TOKENS_PER_S,
    TFLOPS,
    MFU,
    # Total FLOPs (teacher + init + training; mean over seeds), None when a part is unknown.
    Column("FLOPs", "flops", flop_count, get=lambda a: (a.get("flops") or {}).get("total")),
)
