"""SVD figures checked against an independent numpy/scipy computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from svdlora_cli.spectra.decompose import (
    GAP_TOLERANCE,
    POWER_ITERS,
    decompose,
    frobenius_sq,
    rank_for_energy,
    resolve_method,
    spectrum_stats,
    sum_squares,
    svd_exact,
    svd_randomized,
)
from tests.spectra.planted import FLAT, decaying, head_over_noise, planted, true_gap


@pytest.mark.parametrize("rank", [1, 4, 16])
@pytest.mark.parametrize("shape", [(48, 80), (80, 48)])
def test_exact_energy_and_error_match_scipy(rank, shape):
    dw = decaying(*shape, seed=rank)
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
    dw = decaying(40, 60, seed=3, decay=0.7)
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
    dw = decaying(300, 500, seed=1, decay=0.97)
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
    dw = decaying(120, 90, seed=2)
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
    dw = decaying(30, 50, seed=4)
    dec = svd_exact(dw, 10)
    U, S, Vh = dec.sliced(6)
    u, s, vh = np.linalg.svd(dw.double().numpy(), full_matrices=False)
    best = (u[:, :6] * s[:6]) @ vh[:6]
    assert np.abs((U * S) @ Vh - torch.tensor(best, dtype=torch.float32)).max() < 1e-5
    with pytest.raises(ValueError):
        dec.sliced(11)


def test_certificate_catches_two_power_iterations_on_a_flat_spectrum():
    dw = planted(600, 300, FLAT)
    two = svd_randomized(dw, 16, power_iters=2, tolerance=None)
    missed = true_gap(dw, two, 16)
    assert missed > 1e-4  # the planted failure: two iterations lose a measurable share
    assert two.iterations == 2
    # The bound is sound and tight: the exact Gram eigenvalues give the gap itself.
    assert two.gap_bound >= missed - 1e-9
    assert two.gap_bound == pytest.approx(missed, abs=2e-6)


def test_certified_randomized_and_auto_lose_no_measurable_energy_on_a_flat_spectrum():
    dw = planted(600, 300, FLAT)
    certified = svd_randomized(dw, 16, power_iters=2, max_iters=40)
    assert certified.gap_bound <= GAP_TOLERANCE
    assert certified.iterations > 2
    assert 0.0 <= true_gap(dw, certified, 16) <= certified.gap_bound + 1e-9
    auto = decompose(dw, 16, "auto", power_iters=2)
    assert auto.gap_bound <= GAP_TOLERANCE
    assert true_gap(dw, auto, 16) <= GAP_TOLERANCE + 1e-9
    # Every rank up to k is certified by the bound at k (interlacing).
    exact = svd_exact(dw, 16)
    for r in (1, 4, 8, 16):
        assert spectrum_stats(auto, r).energy == pytest.approx(
            spectrum_stats(exact, r).energy, abs=1e-4
        )


def test_auto_falls_back_to_exact_when_the_certificate_cannot_be_met():
    dw = planted(600, 300, FLAT)
    auto = decompose(dw, 16, "auto", power_iters=1, max_iters=1)
    assert auto.method == "exact" and auto.complete and auto.gap_bound == 0.0
    kept = decompose(dw, 16, "randomized", power_iters=1, max_iters=1)
    assert kept.method == "randomized" and kept.gap_bound > GAP_TOLERANCE


def test_low_rank_delta_is_certified_without_the_gram_matrix(monkeypatch):
    # A rank-20 delta: the k + 8 sketch holds all of it, so the free bound suffices.
    s = np.concatenate([np.linspace(3.0, 1.0, 20), np.zeros(280)])
    dw = planted(600, 300, s, seed=3)

    def no_gram(*_args):
        raise AssertionError("the free bound should have certified this")

    monkeypatch.setattr("svdlora_cli.spectra.decompose.gram_matrix", no_gram)
    dec = svd_randomized(dw, 16)
    assert dec.gap_bound <= GAP_TOLERANCE and dec.iterations == 0  # no power iteration
    assert true_gap(dw, dec, 16) <= 1e-6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gap_bound_is_never_below_thetrue_gap(seed):
    rng = np.random.default_rng(seed)
    s = np.sort(rng.pareto(1.5, 200))[::-1] + 0.05
    dw = planted(400, 200, s, seed=seed)
    for iters in (0, 1, 3):
        dec = svd_randomized(dw, 12, power_iters=iters, tolerance=None, seed=seed)
        assert dec.gap_bound >= true_gap(dw, dec, 12) - 1e-9


@pytest.mark.parametrize("shape", [(900, 300), (300, 900)])
def test_randomized_factors_are_dw_projected_on_orthonormal_singular_vectors(shape):
    dw = head_over_noise(*shape, rank=24, seed=2)
    dec = svd_randomized(dw, 24)
    assert dec.iterations == POWER_ITERS and dec.gap_bound <= GAP_TOLERANCE
    U, S, Vh = (t.double() for t in (dec.U, dec.S, dec.Vh))
    eye = torch.eye(24, dtype=torch.float64)
    assert (U.T @ U - eye).abs().max() < 1e-5 and (Vh @ Vh.T - eye).abs().max() < 1e-5
    assert bool((S[:-1] >= S[1:]).all()) and bool((U.T @ dw.double() @ Vh.T).diagonal().gt(0).all())
    # U S Vh is dW projected on the right singular vectors: the residual is orthogonal.
    residual = dw.double() - (U * S) @ Vh
    fro_sq = float((dw.double() ** 2).sum())
    assert float((residual**2).sum()) == pytest.approx(fro_sq - float((S**2).sum()), rel=1e-5)
    s = scipy.linalg.svdvals(dw.double().numpy())
    assert np.abs(dec.S.double().numpy() - s[:24]).max() < 1e-5 * s[0]


def test_sum_squares_is_exact_where_an_fp32_dot_is_not():
    # One MLP-sized matrix: the fp32 dot's error reaches the 4th decimal of energy shares.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4864 * 896, generator=gen) * 1e-3
    exact = float(np.dot(x.double().numpy(), x.double().numpy()))
    assert abs(sum_squares(x) - exact) / exact < 1e-12
    assert abs(float(torch.dot(x, x)) - exact) / exact > 1e-6  # what it replaced
    assert frobenius_sq(x.view(4864, 896)) == sum_squares(x)


def test_sum_squares_reads_the_host_once_with_the_chunked_float64_bits():
    """Five 1M-element chunks, one host read (on a GPU, one sync instead of five), and the
    same bits as adding each chunk's float64 dot in Python."""
    from torch.profiler import ProfilerActivity, profile

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4864 * 896, generator=gen) * torch.rand(4864 * 896, generator=gen)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        total = sum_squares(x)
    assert sum(e.name == "aten::_local_scalar_dense" for e in prof.events()) == 1
    expected = 0.0
    for chunk in torch.split(x, 1 << 20):
        expected += float(np.dot(chunk.double().numpy(), chunk.double().numpy()))
    assert abs(total - expected) / expected < 1e-13
    assert sum_squares(torch.zeros(0)) == 0.0


def test_every_method_the_settings_accept_decomposes():
    """The torch-free settings declare the methods; each one runs and captures the top
    singular values (a low-rank 300 x 200 delta, k = 4)."""
    from svdlora_cli.spectra.settings import METHODS

    gen = torch.Generator().manual_seed(3)
    dw = torch.randn(300, 4, generator=gen) @ torch.randn(4, 200, generator=gen)
    truth = torch.linalg.svdvals(dw.double())[:4]
    for method in METHODS:
        dec = decompose(dw, 4, method=method)
        assert torch.allclose(dec.S[:4].double(), truth, rtol=1e-4), method
