"""The module map built beside the SVD job: the same map as a build in line, stored by the
calling thread, nothing dropped before it is known, and the job skipping what it drops."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from svdlora_cli.errors import CheckpointError
from svdlora_cli.models import module_map
from svdlora_cli.models.module_map import ModuleMap, PendingMap, build_module_map, map_targets
from svdlora_cli.models.targets import select_targets
from svdlora_cli.spectra import svd_job, svd_step
from svdlora_cli.store.cache import ArtifactCache


def _keys(pair) -> list[str]:
    """The default targets' tensor names, in the order the SVD job takes them."""
    from svdlora_cli.models.checkpoints import open_pair
    from svdlora_cli.spectra.delta import pair_targets

    return [t.tensor for t in pair_targets(open_pair(str(pair.base), str(pair.tuned)))[0]]


def test_a_background_map_equals_one_built_in_line_and_the_caller_stores_it(
    llama_pair, tmp_path, monkeypatch
):
    keys = _keys(llama_pair)
    builders: list[str] = []
    real = module_map.build_module_map

    def build(folder, keys):
        builders.append(threading.current_thread().name)
        return real(folder, keys)

    monkeypatch.setattr(module_map, "build_module_map", build)
    cache = ArtifactCache(tmp_path / "cache")
    storers: list[str] = []
    put = cache.put_json
    monkeypatch.setattr(
        cache,
        "put_json",
        lambda *a, **k: storers.append(threading.current_thread().name) or put(*a, **k),
    )
    pending = PendingMap(llama_pair.base, keys, cache)
    assert pending.result() == real(llama_pair.base, keys)
    assert builders[0].startswith("svdlora-module-map")
    assert storers == [threading.current_thread().name]
    again = PendingMap(llama_pair.base, keys, cache)  # from the cache: known at once
    assert again.future.done() and again.result() == pending.result() and len(builders) == 1


def test_nothing_is_dropped_before_the_map_is_known_or_when_it_fails(llama_pair, monkeypatch):
    keys = _keys(llama_pair)
    release = threading.Event()
    full = build_module_map(llama_pair.base, keys)

    def slow(folder, keys):
        release.wait(60)
        return dataclasses.replace(
            full, modules={k: v for k, v in full.modules.items() if k != keys[0]}
        )

    monkeypatch.setattr(module_map, "build_module_map", slow)
    pending = PendingMap(llama_pair.base, keys, None)
    assert not pending.dropped(keys[0])  # still building
    release.set()
    pending.result()
    assert pending.dropped(keys[0]) and not pending.dropped(keys[1])

    def broken(folder, keys):
        raise CheckpointError("no causal LM here", "a hint")

    monkeypatch.setattr(module_map, "build_module_map", broken)
    failed = PendingMap(llama_pair.base, keys, None)
    failed.future.exception()  # wait for the thread
    assert not failed.dropped(keys[0])
    with pytest.raises(CheckpointError):
        failed.result()
    targets, _ = select_targets({k: (32, 32) for k in keys}, "llama")
    kept, _, candidates, coverage = map_targets(llama_pair.base, targets, [], pending=failed)
    assert len(kept) == len(targets) and candidates is None and not coverage.checked


@pytest.fixture
def recorded(monkeypatch) -> list[PendingMap]:
    made: list[PendingMap] = []

    class Recording(PendingMap):
        def __init__(self, *args, **kwargs) -> None:
            made.append(self)
            self.background = kwargs.get("background", True)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(svd_step, "PendingMap", Recording)
    return made


def test_the_job_skips_what_the_map_drops_once_known(llama_pair, tmp_path, monkeypatch, recorded):
    keys = _keys(llama_pair)
    full = build_module_map(llama_pair.base, keys)
    gone = {keys[0], keys[-1]}
    release = threading.Event()

    def slow(folder, keys):
        release.wait(60)
        modules = {k: v for k, v in full.modules.items() if k not in gone}
        return ModuleMap(modules, {}, sorted(gone), full.candidates)

    monkeypatch.setattr(module_map, "build_module_map", slow)
    decomposed: list[str] = []
    real = svd_job.target_delta
    monkeypatch.setattr(
        svd_job,
        "target_delta",
        lambda name, *a, **k: decomposed.append(name) or real(name, *a, **k),
    )

    def progress(name: str, i: int, n: int) -> None:
        if i == 2:  # the map is known from the second item on
            release.set()
            recorded[0].future.result()

    cache = ArtifactCache(tmp_path / "cache")
    result = svd_step.run_svd(
        str(llama_pair.base), str(llama_pair.tuned), cache, rank=2, progress=progress
    )
    assert recorded[0].background
    assert decomposed == keys[:-1]  # the first before the map was known; the last skipped
    names = {m.tensor for m in result.modules}
    assert names == set(keys) - gone
    assert result.cache == {"hits": 0, "misses": len(keys) - 2}
    assert any("2 target tensor(s) are no module" in w for w in result.warnings)


def test_under_a_launch_every_rank_has_the_map_before_the_job(
    llama_pair, tmp_path, monkeypatch, recorded
):
    monkeypatch.setenv("WORLD_SIZE", "2")  # split across processes is off for a library call
    result = svd_step.run_svd(
        str(llama_pair.base), str(llama_pair.tuned), ArtifactCache(tmp_path / "c"), rank=2
    )
    assert recorded[0].background is False and recorded[0].future.done()
    assert len(result.modules) == len(_keys(llama_pair))
