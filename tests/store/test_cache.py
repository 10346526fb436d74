"""The artifact cache: smaller ranks are free, runs resume, corruption is caught."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from svdlora_cli.models.checkpoints import open_checkpoint
from svdlora_cli.spectra import svd_job
from svdlora_cli.spectra.svd_step import run_svd
from svdlora_cli.store.cache import ArtifactCache, content_key


@pytest.fixture
def svd_calls(monkeypatch):
    """Count real decompositions (the work a cache hit must skip)."""
    calls: list[tuple[int, int]] = []
    real = svd_job.decompose

    def counting(dw, k, **kwargs):
        calls.append(tuple(dw.shape))
        return real(dw, k, **kwargs)

    monkeypatch.setattr(svd_job, "decompose", counting)
    return calls


def _same(a, b) -> None:
    assert [m.name for m in a.modules] == [m.name for m in b.modules]
    for x, y in zip(a.modules, b.modules, strict=True):
        assert x.energy == pytest.approx(y.energy, abs=1e-12) and x.rank == y.rank
        assert x.singular_values == y.singular_values
    for module, f in a.factors().items():
        assert torch.equal(f.B, b.factors()[module].B) and torch.equal(f.A, b.factors()[module].A)


def test_smaller_rank_after_larger_does_no_svd(llama_pair, tmp_path, svd_calls):
    cache = ArtifactCache(tmp_path / "cache")
    run_svd(str(llama_pair.base), str(llama_pair.tuned), cache, rank=8)
    assert len(svd_calls) == 14
    svd_calls.clear()
    warm = run_svd(str(llama_pair.base), str(llama_pair.tuned), cache, rank=4)
    assert svd_calls == [] and warm.cache == {"hits": 14, "misses": 0}
    fresh = run_svd(
        str(llama_pair.base), str(llama_pair.tuned), ArtifactCache(tmp_path / "fresh"), rank=4
    )
    assert len(svd_calls) == 14
    _same(warm, fresh)


def test_randomized_slices_serve_smaller_ranks(qwen2_pair, tmp_path, svd_calls):
    cache = ArtifactCache(tmp_path / "cache")
    kwargs = {"method": "randomized", "cache_rank": 8}
    run_svd(str(qwen2_pair.base), str(qwen2_pair.tuned), cache, rank=8, **kwargs)
    svd_calls.clear()
    warm = run_svd(str(qwen2_pair.base), str(qwen2_pair.tuned), cache, rank=3, **kwargs)
    assert svd_calls == []
    fresh = run_svd(
        str(qwen2_pair.base), str(qwen2_pair.tuned), ArtifactCache(tmp_path / "f"), rank=3, **kwargs
    )
    _same(warm, fresh)


def test_larger_rank_than_cached_recomputes(llama_pair, tmp_path, svd_calls):
    cache = ArtifactCache(tmp_path / "cache")
    run_svd(
        str(llama_pair.base),
        str(llama_pair.tuned),
        cache,
        rank=4,
        cache_rank=4,
        method="randomized",
    )
    svd_calls.clear()
    result = run_svd(
        str(llama_pair.base),
        str(llama_pair.tuned),
        cache,
        rank=6,
        cache_rank=4,
        method="randomized",
    )
    assert len(svd_calls) == 14 and all(m.rank == 6 for m in result.modules)


def test_interrupted_run_resumes_where_it_stopped(llama_pair, tmp_path, monkeypatch):
    real = svd_job.decompose
    calls = []

    def interrupt_after_five(dw, k, **kwargs):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(1)
        return real(dw, k, **kwargs)

    monkeypatch.setattr(svd_job, "decompose", interrupt_after_five)
    cache = ArtifactCache(tmp_path / "cache")
    with pytest.raises(KeyboardInterrupt):
        run_svd(str(llama_pair.base), str(llama_pair.tuned), cache, rank=4)
    monkeypatch.setattr(svd_job, "decompose", real)
    resumed = run_svd(str(llama_pair.base), str(llama_pair.tuned), cache, rank=4)
    assert resumed.cache == {"hits": 5, "misses": 9}
    _same(
        resumed, run_svd(str(llama_pair.base), str(llama_pair.tuned), ArtifactCache(None), rank=4)
    )


def test_corrupt_payload_is_dropped_and_recomputed(llama_pair, tmp_path, caplog):
    cache = ArtifactCache(tmp_path / "cache")
    first = run_svd(str(llama_pair.base), str(llama_pair.tuned), cache, rank=4)
    payload = sorted((tmp_path / "cache" / "payloads").rglob("*.safetensors"))[0]
    data = bytearray(payload.read_bytes())
    data[-8:] = b"\x00\x01\x02\x03\x04\x05\x06\x07"
    payload.write_bytes(bytes(data))
    again = run_svd(str(llama_pair.base), str(llama_pair.tuned), cache, rank=4)
    assert again.cache == {"hits": 13, "misses": 1}
    assert "corrupt cache entry" in caplog.text
    _same(first, again)


def test_keys_depend_on_content_not_order():
    a = content_key("svd", base="x", tuned="y", tensor="t", method="exact")
    assert a == content_key("svd", method="exact", tensor="t", tuned="y", base="x")
    assert a != content_key("svd", base="x", tuned="z", tensor="t", method="exact")


def test_info_list_and_clear(llama_pair, tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    run_svd(str(llama_pair.base), str(llama_pair.tuned), cache, rank=2)
    info = cache.info()
    assert info["decompositions"] == 14 and info["payload_bytes"] > 0
    # one per tensor, plus the module map (checkpoint keys -> the built model's modules)
    assert info["statistics"] == len(open_checkpoint(llama_pair.base).tensors) + 1
    assert len([e for e in cache.entries() if e["kind"] == "svd"]) == 14
    assert cache.clear() == info["decompositions"] + info["statistics"]
    assert cache.info()["decompositions"] == 0
    assert not list((tmp_path / "cache" / "payloads").rglob("*.safetensors"))


def test_disabled_cache_stores_nothing(llama_pair, tmp_path):
    cache = ArtifactCache(None)
    result = run_svd(str(llama_pair.base), str(llama_pair.tuned), cache, rank=2)
    assert result.cache == {"hits": 0, "misses": 14} and cache.entries() == []
    assert result.fingerprints == {"base": None, "tuned": None}


def test_numpy_reads_match_torch_reads_and_leave_a_corrupt_payload_to_them(tmp_path):
    """`peek_arrays` (the warm svd path, no torch) gives the bits `peek_decomposition` gives;
    a payload that fails its checksum gives None and stays for the torch read to drop."""
    from svdlora_cli.spectra.decompose import Decomposition
    from svdlora_cli.store.payloads import payload_path

    cache = ArtifactCache(tmp_path / "cache")
    g = torch.Generator().manual_seed(0)
    U, S, Vh = torch.linalg.svd(torch.randn(6, 5, generator=g), full_matrices=False)
    key = content_key("svd", tensor="w")
    cache.put_decomposition(key, Decomposition(U[:, :3], S, Vh[:3], 1.0, "exact", True), tensor="w")
    arrays, dec = cache.peek_arrays(key, 3), cache.peek_decomposition(key, 3)
    assert arrays is not None and dec is not None
    for name, tensor in (("U", dec.U), ("S", dec.S), ("Vh", dec.Vh)):
        assert np.array_equal(arrays[name], tensor.numpy())
    assert cache.peek_arrays(key, 4) is None and cache.svd_entry(key, 4) is None
    path = payload_path(tmp_path / "cache", key)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    assert cache.peek_arrays(key, 3) is None and cache.svd_entry(key, 3) is not None
    assert cache.peek_decomposition(key, 3) is None and cache.svd_entry(key, 3) is None
