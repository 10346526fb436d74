"""The warm `svd` path: a repeated run rebuilt from the cache without torch, transformers or peft.

After a full `svd` run that read every decomposition from the cache and whose adapter
verdict is cached, a small run memo goes into the cache. Its key hashes everything that
decides the outputs: the options (all but the output folder), the model refs as given
with the stat signature (path, size, mtime_ns, inode) of every file their folders hold,
the package versions, the digest of this package's source files and what sets torch's
default thread count. Its value is the document (less what is per run) and, per module,
where its factors came from.

A warm run with the same key reads each module's U, S, Vh from the cache (numpy,
sha256 checked), takes the same rank-r split as the full path, writes through the same
writers (`artifacts.write_svd_files`), recomputes the verdict key from the bytes it
wrote and requires that verdict in the cache. Anything missing, unreadable or different
gives None: the full path then recomputes and checks everything.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .common import Document, record

if TYPE_CHECKING:
    from ..adapters.factors import LowRankFactors
    from ..spectra.svd_step import SvdResult
    from ..store.cache import ArtifactCache


class SvdFields(Protocol):
    """The fields of `svd.SvdOptions` read here (a dataclass: `record` takes all of them)."""

    base_model: str
    teacher_model: str
    output_dir: Path
    split: str
    plot: bool
    rank: int | None
    cache_rank: int


Cached = tuple[Any, Any, Any, dict[str, Any]]  # one module's U, S, Vh (numpy) and index entry


MEMO_VERSION = 1
_ENABLED = True  # tests switch replays off to run the full path on a warm cache
_PER_RUN = ("artifacts", "verification")  # document fields each run writes afresh


class _Cold(Exception):
    """The warm path cannot vouch for this run: the full path runs instead."""


def eligible(options: SvdFields, cache: ArtifactCache) -> bool:
    """One process on an open cache. Any --device: a replay computes nothing, so it writes
    what the full path's repeat writes on that device (whose document names the device the
    memo's run used); the device is part of the memo's key, so a CPU run's memo never
    serves a `--device cuda` repeat or the other way round."""
    from ..distributed import Launch

    return cache.enabled and not Launch.from_env().distributed


def _folder_files(ref: str) -> dict[str, Any]:
    """A model folder's path and every file it holds or reads, each with its stat signature."""
    from ..models.refs import resolve_model_path
    from ..models.weight_files import select_weight_files

    folder = resolve_model_path(ref)
    files = {f for f in folder.iterdir() if f.is_file()} | set(select_weight_files(folder).files)
    rows = []
    for f in sorted(files):
        stat = f.stat()
        name, target = str(f.relative_to(folder)), str(f.resolve())
        rows.append([name, target, stat.st_size, stat.st_mtime_ns, stat.st_ino])
    return {"folder": str(folder), "files": rows}


def _threads() -> dict[str, Any]:
    """What decides torch's default thread count (recorded in the document's `compute`)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "env": {n: os.environ.get(n) for n in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "cpus": os.cpu_count(),
        "affinity": len(affinity(0)) if affinity else None,
    }


def _code_digest() -> str:
    """sha256 of this package's own source files (about 5 ms): a memo replays a document
    made by the code, so an edited or upgraded checkout (an editable install keeps its
    version number) never replays what older code wrote."""
    import hashlib

    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*.py")):
        digest.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def memo_key(options: SvdFields, family: bool = False) -> str:
    """The run memo's cache key: every input that decides the outputs (see the module doc);
    `family`: every input but the rank (svd_rerank.py's memo of a run's spectra)."""
    from ..files import package_versions
    from ..store.cache import content_key

    skip = ("output_dir", "rank") if family else ("output_dir",)
    settings = {k: v for k, v in record(options).items() if k not in skip}
    return content_key(
        "svd-rank-family" if family else "svd-run-memo",
        version=MEMO_VERSION,
        options=settings,
        base=_folder_files(options.base_model),
        tuned=_folder_files(options.teacher_model),
        versions=package_versions(),
        code=_code_digest(),
        threads=_threads(),
    )


def remember(
    options: SvdFields,
    result: SvdResult,
    doc: Document,
    cache: ArtifactCache,
    probe: tuple[bool, str],
    verdict: str | None,
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Keep the run memo of a full run whose every decomposition came from the cache and
    whose written adapter has a cached verdict (`verdict`: its key, as the check computed
    it; `probe`: the probe's setting and why). Cold or warm, the memo and the verdict are
    returned for svd_rerank.py's family memo; None when the run cannot have one."""
    from ..errors import SvdloraError

    if not (eligible(options, cache) and cache.writable):
        return None
    try:
        found = cache.get_json(verdict) if verdict is not None else None
        if not isinstance(found, dict):
            return None
        modules = []
        for m in result.modules:
            source = result.sources[m.name]
            entry = cache.svd_entry(source["key"], source["k"])
            if entry is None:
                return None
            modules.append({"name": m.name, **source, "sha256": entry["sha256"]})
        memo = {
            "version": MEMO_VERSION,
            "document": {k: v for k, v in doc.items() if k not in _PER_RUN},
            "modules": modules,
            "candidates": list(result.candidates),
            "fan_in_fan_out": result.fan_in_fan_out,
            "probe": probe[0],
            "probe_reason": probe[1],
            "verdict": verdict,
        }
        if not doc["cache"]["misses"]:
            cache.put_json(memo_key(options), memo, label="svd run memo")
        return memo, found
    except (OSError, KeyError, SvdloraError):  # a memo is an optimisation: never fail a run
        return None


def replay(options: SvdFields, cache: ArtifactCache) -> Document | None:
    """The outputs of a repeated run, from its memo and the cached factors; None when
    anything is missing or differs (the full path then runs)."""
    return attempt(_replay, options, cache)


def attempt(
    rebuild: Callable[[SvdFields, ArtifactCache], Document],
    options: SvdFields,
    cache: ArtifactCache,
) -> Document | None:
    """`rebuild`'s outputs, or None where the warm paths are off or it cannot vouch for them."""
    from ..errors import SvdloraError

    if not (_ENABLED and eligible(options, cache)):
        return None
    try:
        return rebuild(options, cache)
    except (_Cold, SvdloraError, OSError, ValueError, KeyError, TypeError):
        return None


def _replay(options: SvdFields, cache: ArtifactCache) -> Document:
    memo = cache.get_json(memo_key(options))
    if not isinstance(memo, dict) or memo.get("version") != MEMO_VERSION:
        raise _Cold
    doc = memo["document"]
    return rewrite(
        options,
        cache,
        memo,
        doc,
        load_factors(memo, cache, [int(row["rank"]) for row in doc["modules"]]),
        lambda adapter, factors: _cached_verdict(options, memo, doc, factors, adapter, cache),
    )


def load_factors(memo: dict[str, Any], cache: ArtifactCache, ranks: list[int]) -> list[Cached]:
    """Each memo module's cached U and Vh cut to its rank (copies: the payloads are not kept
    whole), its whole cached S and its index entry, in the document's order."""
    doc = memo["document"]
    if "torch" in sys.modules:  # a caller's setting: the document records the thread count
        import torch

        if torch.get_num_threads() != doc["compute"]["threads"]:
            raise _Cold
    if [m["name"] for m in memo["modules"]] != [row["name"] for row in doc["modules"]]:
        raise _Cold
    out = []
    for source, rank in zip(memo["modules"], ranks, strict=True):
        U, S, Vh, entry = _factors(cache, source)
        out.append((U[:, :rank].copy(), S, Vh[:rank].copy(), entry))
    return out


def rewrite(
    options: SvdFields,
    cache: ArtifactCache,
    memo: dict[str, Any],
    doc: Document,
    cached: list[Cached],
    verify: Callable[[Path, dict[str, LowRankFactors]], dict[str, Any]],
) -> Document:
    """The outputs of `doc` (its rows give each module's rank) from the cached factors,
    through the full path's writers; `verify` gives the verdict of the staged adapter (or
    raises _Cold: nothing is then moved into place)."""
    from ..adapters.factors import split_factors
    from ..artifacts import write_svd_files

    factors: dict[str, LowRankFactors] = {}
    adapter_factors: dict[str, LowRankFactors] = {}
    for (U, S, Vh, _), row in zip(cached, doc["modules"], strict=True):
        r = int(row["rank"])
        if not 0 < r <= U.shape[1]:
            raise _Cold
        factors[row["name"]] = split_factors(U[:, :r], S[:r], Vh[:r], "b")
        if options.split != "b":
            adapter_factors[row["name"]] = split_factors(U[:, :r], S[:r], Vh[:r], options.split)
    written = write_svd_files(
        doc,
        options.output_dir,
        factors,
        adapter_factors or factors,
        memo["candidates"],
        bool(memo["fan_in_fan_out"]),
        record(options),
        plot=options.plot,
        verify=lambda adapter: verify(adapter, factors),
    )
    for _ in doc["modules"]:
        cache.count(hit=True)  # what the full path counts on a repeat: every lookup a hit
    return written


def _factors(cache: ArtifactCache, source: dict[str, Any]) -> Cached:
    """U, S, Vh and the index entry of one module: the entry the full path's lookup would
    take first, the one the memo was made from (same payload sha256), read and checked."""
    import numpy as np

    k = int(source["k"])
    first = next(((key, e) for key in source["keys"] if (e := cache.svd_entry(key, k))), None)
    if first is None or first[0] != source["key"] or first[1].get("sha256") != source["sha256"]:
        raise _Cold
    entry = first[1]
    arrays = cache.peek_arrays(source["key"], k)
    if arrays is None or any(arrays[n].dtype != np.float32 for n in ("U", "S", "Vh")):
        raise _Cold
    return arrays["U"], arrays["S"], arrays["Vh"], entry


def _cached_verdict(
    options: SvdFields,
    memo: dict[str, Any],
    doc: Document,
    factors: dict[str, LowRankFactors],
    adapter: Path,
    cache: ArtifactCache,
) -> dict[str, Any]:
    """The verdict kept under the bytes just written (as the full path reports a cached one)."""
    from ..adapters.verdict import verdict_key

    base = doc["fingerprints"]["base"]
    key = verdict_key(adapter, base, options.base_model, factors, bool(memo["probe"]))
    found = cache.get_json(key) if key is not None and key == memo["verdict"] else None
    if not isinstance(found, dict):
        raise _Cold
    return {**found, "probe_reason": memo["probe_reason"], "cached": True}
