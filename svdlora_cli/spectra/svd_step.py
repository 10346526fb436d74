"""The SVD step: model pair in, per-module spectra, truncated factors and summaries out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from ..adapters.factors import LowRankFactors, split_factors
from ..devices import check_device, local_device
from ..distributed import Launch, missing_warning, work_group
from ..models.checkpoints import open_pair
from ..models.module_map import PendingMap, map_targets
from ..store.cache import DEFAULT_CACHE_RANK, ArtifactCache
from .decompose import (
    ENERGY_LEVELS,
    POWER_ITERS,
    Decomposition,
    rank_for_energy,
    spectrum_stats,
)
from .delta import (
    DeltaRecord,
    Progress,
    collect_deltas,
    pair_dtypes,
    pair_targets,
    summarize_deltas,
)
from .dtype_policy import DEFAULT_DTYPE_POLICY, check_policy
from .settings import check_settings as check_settings  # re-exported
from .settings import svd_label
from .svd_job import SvdItem, SvdJob, SvdLookup
from .truncation import truncation_summary, truncation_warnings


@dataclass
class ModuleSpectrum:
    """One target's spectrum and what its rank-r truncation keeps."""

    name: str
    tensor: str
    shape: list[int]
    module_type: str
    group: str
    layer: int | None
    rank: int
    method: str
    k_cached: int
    energy: float
    rel_error: float
    effective_rank: float | None
    stable_rank: float
    rank_50: int | None
    rank_90: int | None
    rank_95: int | None
    rank_99: int | None
    delta_norm: float
    zero_delta: bool
    spectrum_complete: bool
    power_iterations: int  # randomized: the power iterations run until certified
    energy_gap_bound: float  # certified bound on the top-k energy missed (share of ||dW||^2)
    singular_values: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SvdResult:
    """Spectra, truncated factors and summaries of one `svd` run."""

    rank: int | None
    energy_target: float | None
    method: str
    modules: list[ModuleSpectrum]
    truncated: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    untargeted: list[DeltaRecord]
    summary: dict
    fingerprints: dict[str, str | None]
    cache: dict[str, int]
    candidates: list[str]
    fan_in_fan_out: bool
    target_deltas: list[DeltaRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    compute: dict = field(default_factory=dict)
    coverage: dict = field(default_factory=dict)
    dtypes: dict = field(default_factory=dict)  # stored dtypes, --dtype-policy, rounding share
    # per module: the cache keys looked up in order, the one that served it, its factor count
    sources: dict[str, dict] = field(default_factory=dict)
    _splits: dict[str, dict[str, LowRankFactors]] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        """`rank16` or `energy90`: the suffix of every artifact name."""
        return svd_label(self.rank, self.energy_target)

    def factors(self, split: str = "b") -> dict[str, LowRankFactors]:
        """PEFT-oriented factors per module for the requested split of Sigma (formed once per
        split: the writers, the verdict key and the checks all read them)."""
        if split not in self._splits:
            self._splits[split] = {
                m: split_factors(U, S, Vh, split) for m, (U, S, Vh) in self.truncated.items()
            }
        return self._splits[split]

    def to_dict(self) -> dict:
        return {
            "rank": self.rank,
            "energy_target": self.energy_target,
            "method": self.method,
            "modules": [m.to_dict() for m in self.modules],
            "untargeted": [r.to_dict() for r in self.untargeted if r.changed],
            "summary": self.summary,
            "fingerprints": self.fingerprints,
            "cache": self.cache,
            "compute": self.compute,
            "coverage": self.coverage,
            "dtypes": self.dtypes,
            "warnings": self.warnings,
        }


def _round(values: torch.Tensor) -> list[float]:
    return [float(f"{v:.7g}") for v in values.tolist()]


def run_svd(
    base_model: str,
    teacher_model: str,
    cache: ArtifactCache,
    rank: int | None = None,
    energy: float | None = None,
    max_rank: int = DEFAULT_CACHE_RANK,
    method: str = "auto",
    device: str = "cpu",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    cache_rank: int = DEFAULT_CACHE_RANK,
    oversample: int | None = None,
    power_iters: int = POWER_ITERS,
    sketch_seed: int = 0,
    progress: Progress | None = None,
    dtype_policy: str = DEFAULT_DTYPE_POLICY,
) -> SvdResult:
    """Decompose every target's dW once (per content key) and truncate at the chosen rank(s).
    `sketch_seed` seeds the randomized SVD's sketch."""
    check_settings(rank, energy, max_rank, method, cache_rank, oversample, power_iters)
    check_policy(dtype_policy)
    torch_device = local_device(check_device(device))
    pair = open_pair(base_model, teacher_model, cache.memo, with_fingerprints=cache.enabled)
    targets, rest, warnings = pair_targets(pair, include, exclude)
    single = Launch.from_env().world_size == 1
    # Adapter keys name the modules of the model transformers builds, not the file's keys.
    # One process builds that map while its SVD job runs (skipping what the map drops
    # once known); under a launch every rank needs it first, to split the same work.
    pending = PendingMap(pair.base.path, [t.tensor for t in targets], cache, background=single)
    wanted = rank if rank is not None else max_rank
    keep = max(wanted, cache_rank)
    lookup = SvdLookup(pair, cache, method, oversample, power_iters, sketch_seed, dtype_policy)
    # Cache keys need the pair's fingerprints. While those are still being hashed (files
    # the memo does not know), one process decomposing on a GPU starts at once and looks
    # the rest up later.
    late_keys = single and not pair.fingerprints_ready() and overlaps_hashing(torch_device)
    decs: dict[str, Decomposition] = {}
    todo: list[SvdItem] = []
    for target in targets:
        if pending.dropped(target.tensor):
            continue
        item, found = lookup.item(target, min(keep, min(target.shape))), None
        if not late_keys:
            item, found = lookup.find(item)
        if found is None:
            todo.append(item)
        else:
            decs[target.tensor] = found
    with work_group(cache.enabled) as group:
        if group.launch.distributed and not cache.enabled:
            warnings.append(
                f"without the cache the {group.launch.world_size} processes cannot share "
                "results: each one decomposed every tensor"
            )
        job = SvdJob(
            pair,
            cache,
            torch_device,
            oversample,
            power_iters,
            sketch_seed,
            dtype_policy=dtype_policy,
        )
        computed, late = group.run(
            todo,
            key=lambda item: item.target.tensor,
            cost=lambda item: item.cost(oversample, power_iters),
            compute=lambda items: job.run(items, progress, lookup, pending.dropped),
            fetch=lambda item: cache.peek_decomposition(item.key, item.k),
        )
        decs.update(computed)
        if late:
            warnings.append(missing_warning(late, "decomposition(s)", cache.directory))
        targets, rest, wrappable, coverage = map_targets(
            pair.base.path, targets, rest, cache, pending=pending
        )
        warnings.extend(coverage.warnings())
        hits_before, misses_before = cache.hits, cache.misses
        for target in targets:
            cache.count(hit=lookup.hit[target.tensor])
        sources = {t.module: lookup.sources[t.tensor] for t in targets}
        delta_records, untargeted = collect_deltas(
            pair, targets, rest, cache, progress=None, known=job.stats, policy=dtype_policy
        )
    dtypes, dtype_notes = pair_dtypes(pair, delta_records, dtype_policy)
    warnings += dtype_notes
    by_tensor = {r.name: r for r in delta_records}
    modules: list[ModuleSpectrum] = []
    truncated = {}
    for target in targets:
        dec = decs[target.tensor]
        fixed = rank is not None
        r = min(rank, dec.k) if fixed else rank_for_energy(dec, float(energy or 1.0), max_rank)
        stats = spectrum_stats(dec, r)
        truncated[target.module] = dec.sliced(r)
        modules.append(
            ModuleSpectrum(
                name=target.module,
                tensor=target.tensor,
                shape=list(target.shape),
                module_type=target.module_type,
                group=target.group,
                layer=target.layer,
                rank=r,
                method=dec.method,
                k_cached=dec.k,
                energy=stats.energy,
                rel_error=stats.rel_error,
                effective_rank=stats.effective_rank,
                stable_rank=stats.stable_rank,
                **{f"rank_{round(level * 100)}": stats.rank_for[level] for level in ENERGY_LEVELS},
                delta_norm=by_tensor[target.tensor].delta_norm,
                zero_delta=dec.fro_sq == 0.0,
                spectrum_complete=dec.complete,
                power_iterations=dec.iterations,
                energy_gap_bound=dec.gap_bound,
                singular_values=_round(dec.S),
            )
        )
    rows = [m.to_dict() for m in modules]
    warnings += truncation_warnings(rows, wanted)  # last: a re-truncation swaps them (svd_rerank)
    delta_summary = summarize_deltas(delta_records, untargeted)
    summary = {
        **truncation_summary(rows, fixed_rank=rank is not None),
        "untargeted_share": delta_summary["untargeted_share"],
        "untargeted_changed": delta_summary["untargeted_changed"],
        "zero_modules": sum(m.zero_delta for m in modules),
    }
    return SvdResult(
        rank=rank,
        energy_target=energy,
        method=method,
        modules=modules,
        truncated=truncated,
        untargeted=untargeted,
        summary=summary,
        fingerprints=pair.fingerprints(),
        cache={"hits": cache.hits - hits_before, "misses": cache.misses - misses_before},
        candidates=wrappable
        if wrappable is not None
        else [
            n.removesuffix(".weight") for n in pair.names if len(pair.base.tensors[n].shape) == 2
        ],
        fan_in_fan_out=any(t.transposed for t in targets),
        target_deltas=delta_records,
        warnings=warnings,
        compute={  # where this rank decomposed (CPU results depend on the thread count)
            "device": str(job.device),
            "processes": group.launch.world_size,
            "threads": torch.get_num_threads(),
        },
        coverage=coverage.to_dict(),
        dtypes=dtypes,
        sources=sources,
    )


def overlaps_hashing(device: torch.device) -> bool:
    """Whether the SVD job should start while the fingerprints are being hashed: on a GPU,
    where the CPU is free meanwhile. On the CPU the job's kernels already keep every core
    busy, and the overlap only contends (a cold `svd` of the 0.5B pair on 2 cores: 21.4
    and 22.2 s with it, 19.3 and 19.9 s without)."""
    return device.type != "cpu"


@dataclass(frozen=True)
class SvdScope:
    """The `run_svd` options an analysis passes through unchanged (`sweep`, `layer-report`):
    which targets, how to decompose them, the dtype policy and the progress hook."""

    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    method: str = "auto"
    dtype_policy: str = DEFAULT_DTYPE_POLICY
    progress: Progress | None = None

    def run(
        self, base_model: str, tuned_model: str, cache: ArtifactCache, **settings: Any
    ) -> SvdResult:
        """`run_svd` of the pair in this scope; `settings` are its other options (rank, ...)."""
        scope = {f.name: getattr(self, f.name) for f in fields(self)}
        return run_svd(base_model, tuned_model, cache, **scope, **settings)
