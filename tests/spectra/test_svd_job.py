"""The SVD job starts before the pair's fingerprints are known: what it decomposes meanwhile
is stored under the right keys once they are, and the rest is looked up in the cache."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
import torch

from svdlora_cli.models import checkpoints
from svdlora_cli.spectra import svd_job, svd_step
from svdlora_cli.store.cache import ArtifactCache


@pytest.fixture
def watched(monkeypatch) -> tuple[list, list[bool]]:
    """The pair each run opens (`pairs`), and per decomposed target whether its pair's
    fingerprints were known by then (`ready_at`)."""
    pairs: list = []
    opened = svd_step.open_pair
    monkeypatch.setattr(
        svd_step, "open_pair", lambda *a, **k: pairs.append(opened(*a, **k)) or pairs[-1]
    )
    ready_at: list[bool] = []
    delta = svd_job.target_delta

    def watched_delta(name, *args, **kwargs):
        ready_at.append(pairs[-1].fingerprints_ready())
        return delta(name, *args, **kwargs)

    monkeypatch.setattr(svd_job, "target_delta", watched_delta)
    return pairs, ready_at


@pytest.fixture
def slow_hashing(monkeypatch, watched):
    """Hashing waits for `release`, which `progress` sets at the third item; the SVD job
    overlaps hashing, as on a GPU."""
    pairs, ready_at = watched
    release = threading.Event()
    digest = checkpoints._file_digest
    monkeypatch.setattr(checkpoints, "_file_digest", lambda f: release.wait(60) and digest(f))
    monkeypatch.setattr(svd_step, "overlaps_hashing", lambda device: True)

    def progress(name: str, i: int, n: int) -> None:
        if i == 3:  # the fingerprints are known from the third item on
            release.set()
            pairs[-1].pending.result()

    return release, progress, ready_at


def _run(base, tuned, cache, progress=None):
    return svd_step.run_svd(str(base), str(tuned), cache, rank=2, progress=progress)


def _factors(result) -> dict[str, torch.Tensor]:
    return {
        m: torch.cat([U.flatten(), S, Vh.flatten()]) for m, (U, S, Vh) in result.truncated.items()
    }


def test_results_computed_before_the_keys_are_stored_under_them(llama_pair, tmp_path, slow_hashing):
    release, progress, ready_at = slow_hashing
    reference = _run(llama_pair.base, llama_pair.tuned, ArtifactCache(None))
    release.clear()
    ready_at.clear()
    cache = ArtifactCache(tmp_path / "cache")
    early = _run(llama_pair.base, llama_pair.tuned, cache, progress)
    n = len(early.modules)
    assert ready_at[:2] == [False, False] and all(ready_at[2:]) and len(ready_at) == n
    assert early.cache == {"hits": 0, "misses": n}
    assert _factors(early).keys() == _factors(reference).keys()
    for module, factors in _factors(early).items():
        assert torch.equal(factors, _factors(reference)[module])
    again = _run(llama_pair.base, llama_pair.tuned, cache)  # every result under its key
    assert again.cache == {"hits": n, "misses": 0}
    assert early.sources == again.sources


def test_the_rest_is_looked_up_once_the_fingerprints_are_known(llama_pair, tmp_path, slow_hashing):
    release, progress, ready_at = slow_hashing
    cache = ArtifactCache(tmp_path / "cache")
    release.set()
    first = _run(llama_pair.base, llama_pair.tuned, cache)
    release.clear()
    ready_at.clear()
    copies = [tmp_path / "base", tmp_path / "tuned"]  # the same bytes elsewhere: hashed again
    for source, copy in zip((llama_pair.base, llama_pair.tuned), copies, strict=True):
        shutil.copytree(source, copy)
    moved = _run(*copies, cache, progress)
    n = len(moved.modules)
    assert len(ready_at) == 2  # the first two before the fingerprints; the rest were cached
    assert moved.cache == {"hits": n - 2, "misses": 2}
    for module, factors in _factors(moved).items():
        assert torch.equal(factors, _factors(first)[module])


def test_on_the_cpu_the_job_waits_for_the_fingerprints(llama_pair, tmp_path, monkeypatch, watched):
    assert not svd_step.overlaps_hashing(torch.device("cpu"))
    assert svd_step.overlaps_hashing(torch.device("cuda", 0))
    digest = checkpoints._file_digest
    monkeypatch.setattr(checkpoints, "_file_digest", lambda f: time.sleep(0.3) or digest(f))
    _, ready_at = watched
    _run(llama_pair.base, llama_pair.tuned, ArtifactCache(tmp_path / "cache"))
    assert ready_at and all(ready_at)
