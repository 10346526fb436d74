"""The `svd` step: rank-r decomposition of every target's dW, its spectra and a PEFT adapter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import (
    Document,
    Hooks,
    PairOptions,
    extraction_step,
    record,
    same_named,
)
from .flags import check, option
from .vocabulary import DEVICE, METHOD, PROBE, RANK

if TYPE_CHECKING:
    from ..spectra.svd_step import SvdResult
    from ..store.cache import ArtifactCache

# Defaults shared with the core (kept literal so that building options imports no torch).
CACHE_RANK = 64
POWER_ITERS = 3


@dataclass(frozen=True)
class SvdOptions(PairOptions):
    """Everything `svdlora svd` takes; each field is its option (see flags.py)."""

    rank: int | None = RANK.field(None)
    energy: float | None = option(
        None, help="Per-module smallest rank keeping this share of ||dW||^2, in (0, 1]."
    )
    max_rank: int = option(64, help="Cap on the per-module rank with --energy.")
    method: str = METHOD.field("auto")
    device: str = DEVICE.field("cpu", help="Device: cpu, cuda or cuda:N.")
    split: str = option("b", help="b: B = U_r S_r, A = Vh_r; sqrt: sqrt(S_r) on both.")
    cache_rank: int = option(
        CACHE_RANK, help="Factors kept per tensor in the cache (any rank up to it is free)."
    )
    oversample: int | None = option(None, help="Randomized SVD oversampling (default: k/2).")
    power_iters: int = option(POWER_ITERS, help="Randomized SVD power iterations (at least).")
    sketch_seed: int = option(0, help="Seed of the randomized SVD's sketch.", aliases=("--seed",))
    plot: bool = option(True, help="Write svd_analysis_*.png.", switch=True)
    # None: probe below VERIFY_MAX_PARAMETERS
    probe: bool | None = PROBE.field(
        None,
        help="Check the adapter's logits through PEFT against a direct merge (default: on "
        "below 250M parameters). The structural and per-module delta checks always run.",
        aliases=("--verify",),
    )

    def validate(self) -> None:
        """Every option checked before any work: the decomposition's where the core checks
        them (spectra/svd_step.py), the split here."""
        from ..adapters.factors import SPLITS
        from ..spectra.settings import check_settings

        check_settings(**same_named(check_settings, self))
        check(
            self.split in SPLITS,
            f"unknown --split {self.split!r}",
            f"use one of: {', '.join(SPLITS)}",
        )


def run(
    options: SvdOptions, hooks: Hooks | None = None, cache: ArtifactCache | None = None
) -> Document | None:
    """Factors, PEFT adapter, analysis JSON, report and plot; the document (None off rank 0).

    A repeat whose decompositions and verdict are all cached takes the warm path first
    (svd_warm.py: no torch), and so does another rank cut from a checked run's cached
    spectra (svd_rerank.py); the full path runs whenever they cannot vouch for the outputs.
    """
    from ..artifacts import write_svd_outputs
    from . import svd_rerank, svd_warm

    options.validate()
    refuse_output_in_model(options.output_dir)
    opened: list[ArtifactCache] = []  # the cache the step ran on: it keeps the verdicts too

    def compute(c: ArtifactCache, update: Any) -> Any:
        from ..spectra.svd_step import run_svd

        opened.append(c)
        settings = same_named(run_svd, options, "cache")  # rank, method, ... sketch_seed
        return run_svd(cache=c, progress=update, **settings)

    def write(result: SvdResult) -> Document:
        probe = probe_setting(options)
        verdict: str | None = None  # the checked adapter's verdict key, for the run memo

        def verify(adapter: Path) -> dict:
            nonlocal verdict
            checked, verdict = verification(options, result, adapter, opened[-1], probe)
            return checked

        doc = write_svd_outputs(
            result,
            options.output_dir,
            options.base_model,
            options.teacher_model,
            options.split,
            record(options),
            plot=options.plot,
            verify=verify,
        )
        remembered = svd_warm.remember(options, result, doc, opened[-1], probe, verdict)
        svd_rerank.remember_family(
            options, remembered, Path(doc["artifacts"]["adapter"]), opened[-1]
        )
        return doc

    def replay(c: ArtifactCache) -> Document | None:
        return svd_warm.replay(options, c) or svd_rerank.replay(options, c)

    return extraction_step(options, hooks, cache, "SVD", compute, write, replay=replay)


def refuse_output_in_model(output_dir: Path) -> None:
    """An output folder that is a model folder, or lies inside one, would mix svdlora's
    files into a checkpoint (and may shadow its weights): refused before any work."""
    from ..errors import OutputError
    from ..models.refs import enclosing_model_folder

    model = enclosing_model_folder(output_dir)
    if model is not None:
        where = "is" if model == output_dir.expanduser().resolve() else "lies inside"
        raise OutputError(
            f"output folder {output_dir} {where} the model folder {model}",
            "pass an --output-dir outside every model folder, e.g. svdlora-out",
        )


def probe_setting(options: SvdOptions) -> tuple[bool, str]:
    """Whether the logits probe runs (--probe, --no-probe, else by the base's size), and why."""
    from ..adapters.verify import VERIFY_MAX_PARAMETERS, parameter_count
    from ..models.refs import resolve_model_path

    if options.probe is not None:
        return options.probe, "--probe" if options.probe else "--no-probe"
    count = parameter_count(resolve_model_path(options.base_model))
    probe = count < VERIFY_MAX_PARAMETERS
    return probe, f"{count:,} parameters: " + (
        "on by default below 250M" if probe else "off by default from 250M (pass --probe)"
    )


def verification(
    options: SvdOptions,
    result: SvdResult,
    adapter: Path,
    cache: ArtifactCache | None,
    probe_and_reason: tuple[bool, str],
) -> tuple[dict, str | None]:
    """The structural check always; the logits probe with --probe (default: small models);
    the verdict, and its cache key (None without a cache or a fingerprint).

    The probe merges the SVD's own rank-r deltas, not the adapter file's: a wrong scale,
    orientation or split in the adapter shows up as a mismatch. A passed verdict is kept
    in the cache under the adapter's bytes, the factors it must equal, the base (weights
    and config) and the probe setting: a warm run that writes the same bytes is not checked
    twice (`"cached": true`); any other byte is checked afresh.
    """
    from ..adapters.low_rank import LazyDeltas
    from ..adapters.verify import verify_adapter

    if result.coverage.get("checked") is False:
        reason = result.coverage.get("reason")
        return {"structural": {"ok": None, "skipped": reason}, "probe": None}, None
    probe, reason = probe_and_reason
    factors = result.factors("b")
    key = None
    if cache is not None and cache.enabled:
        from ..adapters.verdict import verdict_key

        base = result.fingerprints["base"]
        key = verdict_key(adapter, base, options.base_model, factors, probe)
        found = cache.get_json(key) if key else None
        if isinstance(found, dict):
            return {**found, "probe_reason": reason, "cached": True}, key
    # Always against the SVD's own factors, never the file's (a wrong alpha read the same way
    # by PEFT and by this package would agree with itself): cheap as r x r Gram products.
    expected = LazyDeltas(factors, lambda f: (f.B, f.A))
    doc = verify_adapter(adapter, options.base_model, probe=probe, expected=expected)
    doc["probe_reason"] = reason
    if key is not None and cache is not None and cache.writable:
        cache.put_json(key, doc, label="adapter verdict")
    return {**doc, "cached": False}, key
