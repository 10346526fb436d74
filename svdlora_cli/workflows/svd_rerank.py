"""Another rank cut from a run's cached spectra, without torch, transformers or peft.

`svd --rank 16`, then `--rank 8` on the same pair and options: every decomposition is a
cache hit (the cache keeps `--cache-rank` factors), and what changes is the truncation.
After a full `--rank` run whose adapter PEFT checked (without the logits probe), a family
memo goes into the cache under every input but the rank (`svd_warm.memo_key(family=True)`):
the run memo (document, sources, ...), the document's warnings less the rank-dependent
ones, and the checked adapter's format (`adapters/sibling.sibling_record`).

A run at another rank up to `--cache-rank` then:
1. reads each module's cached U, S, Vh (numpy, sha256 checked, the entry the full path's
   lookup takes first), as the warm replay does;
2. re-truncates the document with the full path's own functions (spectra/truncation.py:
   each module's rank, energy and relative error, the summary, the clamp warning) from the
   same float64 squares of the same singular values, so every figure is the full path's;
3. writes through the full path's writers, and carries the checked adapter's verdict to
   the new bytes only when they have its format and equal their factors
   (`adapters/sibling.carried_verdict`); the carried verdict is cached under the new
   bytes and a run memo is kept, so the same command again replays.
Anything missing or different falls back to the full path, which checks through PEFT.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .svd_warm import (
    _PER_RUN,
    MEMO_VERSION,
    Cached,
    SvdFields,
    _Cold,
    attempt,
    load_factors,
    memo_key,
    rewrite,
)

if TYPE_CHECKING:
    from ..adapters.factors import LowRankFactors
    from ..store.cache import ArtifactCache
    from .common import Document


def _cuttable(options: SvdFields) -> bool:
    """A single --rank within the cached factors: every module's decomposition is then the
    same cache entry at any such rank (the full path keeps max(rank, cache_rank) factors)."""
    return options.rank is not None and options.rank <= options.cache_rank


def remember_family(
    options: SvdFields,
    remembered: tuple[dict[str, Any], dict[str, Any]] | None,
    adapter: Path,
    cache: ArtifactCache,
) -> None:
    """Keep the family memo of a full run (`remembered`: its run memo and the verdict of
    its checked `adapter`, from `svd_warm.remember`), when another rank can be cut from it."""
    from ..adapters.sibling import sibling_record
    from ..errors import SvdloraError

    if remembered is None or not _cuttable(options):
        return
    memo, verdict = remembered
    try:
        family = _family(memo, sibling_record(adapter, verdict))
        if family is not None:
            cache.put_json(memo_key(options, family=True), family, label="svd rank family memo")
    except (OSError, KeyError, SvdloraError):  # a memo is an optimisation: never fail a run
        return


def _family(memo: dict[str, Any], sibling: dict[str, Any] | None) -> dict[str, Any] | None:
    """The family memo: the run memo, the warnings before the rank-dependent ones (which
    `svd_step` puts last) and the checked adapter's format; None if it cannot carry."""
    from ..spectra.truncation import truncation_warnings

    doc = memo["document"]
    warnings = list(doc["warnings"])
    tail = truncation_warnings(doc["modules"], int(doc["rank"]))
    if sibling is None or warnings[len(warnings) - len(tail) :] != tail:
        return None
    return {
        "version": MEMO_VERSION,
        "memo": memo,
        "warnings": warnings[: len(warnings) - len(tail)],
        "sibling": sibling,
    }


def replay(options: SvdFields, cache: ArtifactCache) -> Document | None:
    """The outputs of a run at a new rank from the family memo; None when there is none
    or anything differs (the full path then runs)."""
    return attempt(_rerank, options, cache)


def _rerank(options: SvdFields, cache: ArtifactCache) -> Document:
    """Re-truncate, write, carry the verdict, keep the run memo (raises _Cold to give way)."""
    from ..adapters.sibling import carried_verdict
    from ..adapters.verdict import verdict_key

    family = cache.get_json(memo_key(options, family=True)) if _cuttable(options) else None
    if not isinstance(family, dict) or family.get("version") != MEMO_VERSION:
        raise _Cold
    memo = family["memo"]  # the cache's own copy, read for this run
    rank = int(options.rank or 0)
    rows = memo["document"]["modules"]
    cached = load_factors(memo, cache, [min(rank, int(row["k_cached"])) for row in rows])
    doc = retruncate(memo["document"], cached, family["warnings"], rank)
    checked: list[str] = []

    def verify(adapter: Path, factors: dict[str, LowRankFactors]) -> dict[str, Any]:
        base = doc["fingerprints"]["base"]
        key = verdict_key(adapter, base, options.base_model, factors, bool(memo["probe"]))
        carried = carried_verdict(adapter, family["sibling"], factors)
        if key is None or carried is None:
            raise _Cold
        if cache.writable:
            cache.put_json(key, carried, label="adapter verdict")
        checked.append(key)
        return {**carried, "probe_reason": memo["probe_reason"], "cached": False}

    written = rewrite(options, cache, memo, doc, cached, verify)
    if cache.writable:
        memo.update(document={k: v for k, v in written.items() if k not in _PER_RUN})
        cache.put_json(memo_key(options), {**memo, "verdict": checked[0]}, label="svd run memo")
    return written


def retruncate(
    doc: Document, cached: list[Cached], warnings: list[str], rank: int
) -> dict[str, Any]:
    """`doc` (a run's document at another rank) at `rank`: each module's rank, energy and
    relative error, the summary and the trailing warnings, as the full path computes them."""
    import numpy as np

    from ..spectra.truncation import (
        captured_energy,
        truncation_energy,
        truncation_summary,
        truncation_warnings,
    )

    doc = copy.deepcopy(doc)
    rows = doc["modules"]
    for row, (_, S, _, entry) in zip(rows, cached, strict=True):
        fro_sq = float(entry["fro_sq"])
        captured = captured_energy(
            (S.astype(np.float64) ** 2).tolist(), fro_sq, bool(entry["complete"])
        )
        row["rank"] = min(rank, int(row["k_cached"]))
        row["energy"], row["rel_error"] = truncation_energy(captured, fro_sq, row["rank"])
    doc["rank"] = rank
    doc["summary"].update(truncation_summary(rows, fixed_rank=True))
    doc["warnings"] = warnings + truncation_warnings(rows, rank)
    doc["cache"] = {"hits": len(rows), "misses": 0}  # every lookup of this rank hits
    return doc
