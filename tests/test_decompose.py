"""SVD figures checked against an independent numpy/scipy computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from svdlora_cli.decompose import (
    decompose,
    rank_for_energy,
    resolve_method,
    spectrum_stats,
    svd_exact,
    svd_randomized,
)


def _matrix(m: int, n: int, seed: int = 0, decay: float = 0.8) -> torch.Tensor:
    """A matrix with a geometrically decaying spectrum."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, min(m, n))))
    v, _ = np.linalg.qr(rng.standard_normal((n, min(m, n))))
    s = decay ** np.arange(min(m, n))
    return torch.tensor((u * s) @ v.T, dtype=torch.float32)


@pytest.mark.parametrize("rank", [1, 4, 16])
@pytest.mark.parametrize("shape", [(48, 80), (80, 48)])
def test_exact_energy_and_error_match_scipy(rank, shape):
    dw = _matrix(*shape, seed=rank)
    stats = spectrum_stats(svd_exact(dw, 64), rank)
    ref = dw.double().numpy()
    u, s, vh = scipy.linalg.svd(ref, full_matrices=False)
    approx = (u[:, :rank] * s[:rank]) @ vh[:rank]
    ref_error = np.linalg.norm(ref - approx) / np.linalg.norm(ref)
    ref_energy = float((s[:rank] ** 2).sum() / np.linalg.norm(ref) ** 2)
    assert stats.energy == pytest.approx(ref_energy, abs=1e-6)
    assert stats.rel_error == pytest.approx(ref_error, abs=1e-6)
    assert stats.rel_error == pytest.approx(math.sqrt(1 - stats.energy), abs=1e-6)


def test_rank_measures_match_independent_formulas():
    dw = _matrix(40, 60, seed=3, decay=0.7)
    dec = svd_exact(dw, 64)
    stats = spectrum_stats(dec, 5)
    s = np.linalg.svd(dw.double().numpy(), compute_uv=False)
    p = s / s.sum()
    assert stats.effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-5)
    assert stats.stable_rank == pytest.approx((s**2).sum() / s[0] ** 2, rel=1e-5)
    cumulative = np.cumsum(s**2) / (s**2).sum()
    for level in (0.5, 0.9, 0.95, 0.99):
        assert stats.rank_for[level] == int(np.searchsorted(cumulative, level - 1e-12) + 1)
    assert rank_for_energy(dec, 0.9, 64) == stats.rank_for[0.9]
    assert rank_for_energy(dec, 0.9, 2) == 2


def test_randomized_matches_exact_on_decaying_spectrum():
    dw = _matrix(300, 500, seed=1, decay=0.97)
    exact = svd_exact(dw, 32)
    rand = svd_randomized(dw, 32, seed=0)
    assert torch.allclose(rand.S[:16], exact.S[:16], rtol=0.01)
    assert not rand.complete and exact.complete
    # The denominator is the matrix's own norm, so the truncated spectrum cannot inflate energy.
    assert rand.fro_sq == pytest.approx(exact.fro_sq, rel=1e-6)
    assert spectrum_stats(rand, 16).energy == pytest.approx(
        spectrum_stats(exact, 16).energy, abs=1e-3
    )
    assert spectrum_stats(rand, 16).effective_rank is None


def test_randomized_is_deterministic_per_seed():
    dw = _matrix(120, 90, seed=2)
    a, b = svd_randomized(dw, 8, seed=7), svd_randomized(dw, 8, seed=7)
    assert torch.equal(a.U, b.U) and torch.equal(a.S, b.S)


def test_zero_delta_is_reported_without_dividing_by_zero():
    dec = decompose(torch.zeros(16, 24), 8)
    stats = spectrum_stats(dec, 4)
    assert (stats.energy, stats.rel_error, stats.stable_rank) == (1.0, 0.0, 0.0)
    assert rank_for_energy(dec, 0.9, 8) == 1


def test_auto_method_prefers_exact_for_small_matrices():
    assert resolve_method("auto", (64, 128), 16) == "exact"
    assert resolve_method("auto", (4096, 11008), 64) == "randomized"
    assert resolve_method("exact", (4096, 11008), 64) == "exact"


def test_sliced_factors_reconstruct_best_rank_r():
    dw = _matrix(30, 50, seed=4)
    dec = svd_exact(dw, 10)
    U, S, Vh = dec.sliced(6)
    u, s, vh = np.linalg.svd(dw.double().numpy(), full_matrices=False)
    best = (u[:, :6] * s[:6]) @ vh[:6]
    assert np.abs((U * S) @ Vh - torch.tensor(best, dtype=torch.float32)).max() < 1e-5
    with pytest.raises(ValueError):
        dec.sliced(11)
