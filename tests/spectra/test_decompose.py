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
    gram_matrix,
    rank_for_energy,
    resolve_method,
    schur_top_energy,
    spectrum_stats,
    sum_squares,
    svd_exact,
    svd_randomized,
    top_energy,
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


def _planted(m: int, n: int, s: np.ndarray, seed: int = 0) -> torch.Tensor:
    """U diag(s) V^T with random orthonormal U, V: a spectrum chosen exactly."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, len(s))))
    v, _ = np.linalg.qr(rng.standard_normal((n, len(s))))
    return torch.tensor((u * s) @ v.T, dtype=torch.float32)


def _true_gap(dw: torch.Tensor, dec, k: int) -> float:
    """Missed top-k energy share, from scipy's float64 singular values (independent)."""
    s = scipy.linalg.svdvals(dw.double().numpy())
    fro_sq = float((s**2).sum())
    return (float((s[:k] ** 2).sum()) - float((dec.S[:k].double() ** 2).sum())) / fro_sq


FLAT = 1.0 / np.arange(1, 301) ** 0.3  # slow decay: the range finder converges slowly


def test_certificate_catches_two_power_iterations_on_a_flat_spectrum():
    dw = _planted(600, 300, FLAT)
    two = svd_randomized(dw, 16, power_iters=2, tolerance=None)
    missed = _true_gap(dw, two, 16)
    assert missed > 1e-4  # the planted failure: two iterations lose a measurable share
    assert two.iterations == 2
    # The bound is sound and tight: the exact Gram eigenvalues give the gap itself.
    assert two.gap_bound >= missed - 1e-9
    assert two.gap_bound == pytest.approx(missed, abs=2e-6)


def test_certified_randomized_and_auto_lose_no_measurable_energy_on_a_flat_spectrum():
    dw = _planted(600, 300, FLAT)
    certified = svd_randomized(dw, 16, power_iters=2, max_iters=40)
    assert certified.gap_bound <= GAP_TOLERANCE
    assert certified.iterations > 2
    assert 0.0 <= _true_gap(dw, certified, 16) <= certified.gap_bound + 1e-9
    auto = decompose(dw, 16, "auto", power_iters=2)
    assert auto.gap_bound <= GAP_TOLERANCE
    assert _true_gap(dw, auto, 16) <= GAP_TOLERANCE + 1e-9
    # Every rank up to k is certified by the bound at k (interlacing).
    exact = svd_exact(dw, 16)
    for r in (1, 4, 8, 16):
        assert spectrum_stats(auto, r).energy == pytest.approx(
            spectrum_stats(exact, r).energy, abs=1e-4
        )


def test_auto_falls_back_to_exact_when_the_certificate_cannot_be_met():
    dw = _planted(600, 300, FLAT)
    auto = decompose(dw, 16, "auto", power_iters=1, max_iters=1)
    assert auto.method == "exact" and auto.complete and auto.gap_bound == 0.0
    kept = decompose(dw, 16, "randomized", power_iters=1, max_iters=1)
    assert kept.method == "randomized" and kept.gap_bound > GAP_TOLERANCE


def test_low_rank_delta_is_certified_without_the_gram_matrix(monkeypatch):
    # A rank-20 delta: the k + 8 sketch holds all of it, so the free bound suffices.
    s = np.concatenate([np.linspace(3.0, 1.0, 20), np.zeros(280)])
    dw = _planted(600, 300, s, seed=3)

    def no_gram(*_args):
        raise AssertionError("the free bound should have certified this")

    monkeypatch.setattr("svdlora_cli.spectra.decompose.gram_matrix", no_gram)
    dec = svd_randomized(dw, 16)
    assert dec.gap_bound <= GAP_TOLERANCE and dec.iterations == 0  # no power iteration
    assert _true_gap(dw, dec, 16) <= 1e-6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gap_bound_is_never_below_the_true_gap(seed):
    rng = np.random.default_rng(seed)
    s = np.sort(rng.pareto(1.5, 200))[::-1] + 0.05
    dw = _planted(400, 200, s, seed=seed)
    for iters in (0, 1, 3):
        dec = svd_randomized(dw, 12, power_iters=iters, tolerance=None, seed=seed)
        assert dec.gap_bound >= _true_gap(dw, dec, 12) - 1e-9


def _head_over_noise(m: int, n: int, rank: int, seed: int = 0) -> torch.Tensor:
    """A rank-`rank` head with s_i ~ i^-0.5 (80% of the norm) over dense noise (20%): the
    shape of benchmarks/make_pair.py's planted deltas and of a real fine-tune's dW."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(m, rank, generator=gen)
    v = torch.randn(rank, n, generator=gen)
    head = (u * torch.arange(1, rank + 1) ** -0.5) @ v
    noise = torch.randn(m, n, generator=gen)
    return head / head.norm() * 0.8 + noise / noise.norm() * 0.2


def _orthonormal(n: int, q: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, q, generator=torch.Generator().manual_seed(seed)))[0]


SPECTRA = {
    "flat": FLAT[:120],
    "pareto": np.sort(np.random.default_rng(5).pareto(1.5, 120))[::-1] + 0.05,
    "equal": np.ones(120),
    "rank 10": np.concatenate([np.linspace(2.0, 1.0, 10), np.zeros(110)]),
    "cluster at k": np.concatenate([np.full(12, 3.0), np.full(10, 1.0), np.full(98, 0.2)]),
}


@pytest.mark.parametrize("spectrum", list(SPECTRA))
@pytest.mark.parametrize("shape", [(240, 120), (120, 240)])
def test_schur_bound_is_never_below_the_true_top_energy(spectrum, shape):
    dw = _planted(*shape, SPECTRA[spectrum], seed=len(spectrum))
    s = scipy.linalg.svdvals(dw.double().numpy())  # independent float64 truth
    gram = torch.tensor(dw.double().numpy().T @ dw.double().numpy())
    if shape[0] < shape[1]:
        gram = torch.tensor(dw.double().numpy() @ dw.double().numpy().T)
    side = gram.shape[0]
    for k in (1, 5, 12, 20):
        truth = float((s[:k] ** 2).sum())
        bases = {  # a poor basis, sketches of growing quality, the right one
            "random": _orthonormal(side, k + 8, seed=k),
            **{
                f"{it} iterations": (d.Vh.T if shape[0] >= shape[1] else d.U)
                for it in (0, 1, 3)
                for d in [svd_randomized(dw, k + 8, power_iters=it, tolerance=None, seed=k)]
            },
        }
        for name, basis in bases.items():
            bound = schur_top_energy(gram, basis, k)
            assert bound >= truth * (1 - 1e-12), (spectrum, k, name, bound, truth)
    assert (
        schur_top_energy(torch.zeros(30, 30, dtype=torch.float64), _orthonormal(30, 4, 0), 2) == 0
    )


def test_schur_bound_certifies_a_head_over_noise_without_the_eigensolver(monkeypatch):
    dw = _head_over_noise(1200, 300, rank=32)
    s = scipy.linalg.svdvals(dw.double().numpy())
    fro_sq = float((s**2).sum())
    # The basis a k = 32 sketch checks: its k + 16 columns, after 3 power iterations.
    dec = svd_randomized(dw, 48, oversample=0, power_iters=3, tolerance=None)
    bound = schur_top_energy(gram_matrix(dw), dec.Vh.T, 32)
    truth = float((s[:32] ** 2).sum())
    # Tight: within 1e-7 of the share ||dW||^2 (the certificate's tolerance is 1e-5).
    assert truth * (1 - 1e-12) <= bound <= truth + 1e-7 * fro_sq

    def no_eigensolver(*_args):
        raise AssertionError("the Schur bound should have certified this")

    monkeypatch.setattr("svdlora_cli.spectra.decompose._top_eigenvalues", no_eigensolver)
    certified = svd_randomized(dw, 32)
    assert certified.gap_bound <= GAP_TOLERANCE
    assert 0.0 <= _true_gap(dw, certified, 32) <= certified.gap_bound + 1e-9
    wide = svd_randomized(dw.T.contiguous(), 32)  # the other Gram side: dW dW^T
    assert wide.gap_bound <= GAP_TOLERANCE
    assert torch.allclose(wide.S, certified.S, rtol=1e-5)


@pytest.mark.parametrize("shape", [(900, 300), (300, 900)])
def test_randomized_factors_are_dw_projected_on_orthonormal_singular_vectors(shape):
    dw = _head_over_noise(*shape, rank=24, seed=2)
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


def test_top_energy_matches_scipy():
    dw = _matrix(80, 50, seed=5, decay=0.95)
    s = scipy.linalg.svdvals(dw.double().numpy())
    assert top_energy(dw, 7) == pytest.approx(float((s[:7] ** 2).sum()), rel=1e-10)
    assert top_energy(dw.T.contiguous(), 7) == pytest.approx(float((s[:7] ** 2).sum()), rel=1e-10)


def test_sum_squares_is_exact_where_an_fp32_dot_is_not():
    # One MLP-sized matrix: the fp32 dot's error reaches the 4th decimal of energy shares.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4864 * 896, generator=gen) * 1e-3
    exact = float(np.dot(x.double().numpy(), x.double().numpy()))
    assert abs(sum_squares(x) - exact) / exact < 1e-12
    assert abs(float(torch.dot(x, x)) - exact) / exact > 1e-6  # what it replaced
    assert frobenius_sq(x.view(4864, 896)) == sum_squares(x)


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
