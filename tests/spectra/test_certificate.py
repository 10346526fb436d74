"""The certificate's bounds against scipy's singular values (an independent truth)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from svdlora_cli.spectra.certificate import gram_matrix, schur_bound, top_eigenvalues
from svdlora_cli.spectra.decompose import GAP_TOLERANCE, svd_randomized
from tests.spectra.planted import FLAT, decaying, head_over_noise, planted, true_gap


def _bound(gram: torch.Tensor, basis: torch.Tensor, k: int) -> float:
    """`schur_bound` on the orthonormalised span of any basis."""
    return schur_bound(gram, torch.linalg.qr(basis.double())[0], k)


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
    dw = planted(*shape, SPECTRA[spectrum], seed=len(spectrum))
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
            bound = _bound(gram, basis, k)
            assert bound >= truth * (1 - 1e-12), (spectrum, k, name, bound, truth)
    assert _bound(torch.zeros(30, 30, dtype=torch.float64), _orthonormal(30, 4, 0), 2) == 0


def test_schur_bound_certifies_a_head_over_noise_without_the_eigensolver(monkeypatch):
    dw = head_over_noise(1200, 300, rank=32)
    s = scipy.linalg.svdvals(dw.double().numpy())
    fro_sq = float((s**2).sum())
    # The basis a k = 32 sketch checks: its k + 16 columns, after 3 power iterations.
    dec = svd_randomized(dw, 48, oversample=0, power_iters=3, tolerance=None)
    bound = _bound(gram_matrix(dw), dec.Vh.T, 32)
    truth = float((s[:32] ** 2).sum())
    # Tight: within 1e-7 of the share ||dW||^2 (the certificate's tolerance is 1e-5).
    assert truth * (1 - 1e-12) <= bound <= truth + 1e-7 * fro_sq

    def no_eigensolver(*_args):
        raise AssertionError("the Schur bound should have certified this")

    monkeypatch.setattr("svdlora_cli.spectra.decompose.top_eigenvalues", no_eigensolver)
    certified = svd_randomized(dw, 32)
    assert certified.gap_bound <= GAP_TOLERANCE
    assert 0.0 <= true_gap(dw, certified, 32) <= certified.gap_bound + 1e-9
    wide = svd_randomized(dw.T.contiguous(), 32)  # the other Gram side: dW dW^T
    assert wide.gap_bound <= GAP_TOLERANCE
    assert torch.allclose(wide.S, certified.S, rtol=1e-5)


def test_top_energy_matches_scipy():
    dw = decaying(80, 50, seed=5, decay=0.95)
    s = scipy.linalg.svdvals(dw.double().numpy())
    assert top_eigenvalues(gram_matrix(dw), 7) == pytest.approx(
        float((s[:7] ** 2).sum()), rel=1e-10
    )
    assert top_eigenvalues(gram_matrix(dw.T.contiguous()), 7) == pytest.approx(
        float((s[:7] ** 2).sum()), rel=1e-10
    )


@pytest.mark.parametrize("shape", [(300, 70), (70, 300), (64, 64)])
def test_the_gram_matrix_equals_a_float64_product_and_is_exactly_symmetric(shape):
    """Against an independent float64 product of the smaller side; a transposed view too."""
    dw = decaying(*shape, seed=3, decay=0.97)
    array = dw.double().numpy()
    truth = array.T @ array if shape[0] >= shape[1] else array @ array.T
    for gram in (gram_matrix(dw), gram_matrix(dw.T.contiguous().T)):
        assert gram.dtype == torch.float64 and gram.shape == truth.shape
        assert torch.equal(gram, gram.T)
        assert np.allclose(gram.numpy(), truth, rtol=1e-13, atol=1e-13 * abs(truth).max())
