"""The certificate of a randomized SVD: upper bounds on the top-k energy it misses.

Everything here works on the float64 Gram matrix of dW's smaller side, whose entries
carry rounding of about min(m, n) * 1e-16 of ||dW||_F**2; the bounds stay upper bounds
under it. The cheap bound is a Schur complement (matrix products and one Cholesky
factorization); the exact one takes the Gram matrix's eigenvalues (an eigensolver: 3x
the Schur bound's time on this project's CPU, and reported slow on GPUs).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch

# The certificate: the top-k energy a randomized decomposition misses, as a share of
# ||dW||_F**2, is at most this (10x below the 1e-4 we promise against an exact SVD).
GAP_TOLERANCE = 1e-5
# fp32 singular values and ||dW||_F**2 carry relative errors of a few 1e-7; the bound adds
# this share of the captured energy so that it stays an upper bound despite them.
ROUNDING_SLACK = 1e-6


# The Gram matrix is formed in column blocks below the diagonal (a symmetric rank-k update
# done with matrix products): 4 blocks do 5/8 of a full product's flops.
GRAM_BLOCKS = 4


def gram_matrix(dw: torch.Tensor) -> torch.Tensor:
    """The smaller Gram matrix of dW in float64: dW^T dW when dW is tall, else dW dW^T.

    fp32 products are exact in float64, so the only rounding is the sum over the long
    side: about min(m, n) * 1e-16 of ||dW||_F**2, far below any tolerance we certify.
    Each block below the diagonal is computed once and mirrored, and so is the lower
    triangle of each diagonal square (a product too), so the result is exactly symmetric.

    (numpy's A^T A calls BLAS syrk at half these flops, but on the CPU its OpenBLAS threads
    spin beside torch's after each call: a cold `svd` of the 0.5B pair took 28-30 s
    against 20-21 s, and 21.8 s with OPENBLAS_NUM_THREADS=1.)
    """
    wide = dw.double()
    if dw.shape[1] > dw.shape[0]:
        wide = wide.T
    n = wide.shape[1]
    gram = torch.empty(n, n, dtype=wide.dtype, device=wide.device)
    edges = [round(i * n / GRAM_BLOCKS) for i in range(GRAM_BLOCKS + 1)]
    for lo, hi in itertools.pairwise(edges):
        if hi > lo:
            block = wide[:, lo:].T @ wide[:, lo:hi]  # rows lo.., columns lo:hi
            gram[lo:, lo:hi] = block
            gram[lo:hi, lo:] = block.T
            square = gram[lo:hi, lo:hi]
            square.copy_(square.tril() + square.tril(-1).T)
    return gram


def small_eigh(H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of a small symmetric q x q matrix, taken on
    the CPU: LAPACK does it in a millisecond, where a GPU eigensolver call costs more
    than the matrix products around it."""
    values, vectors = torch.linalg.eigh(((H + H.T) / 2).cpu())
    return values.to(H.device), vectors.to(H.device)


def top_eigenvalues(gram: torch.Tensor, k: int) -> float:
    """The sum of a symmetric PSD matrix's k largest eigenvalues, exactly: for the Gram
    matrix, dW's top-k energy. An eigensolver: about half an exact SVD's time on a CPU
    (and GPU eigensolvers are reported slow), so the certificate tries `schur_bound` first."""
    return float(torch.linalg.eigvalsh(gram).clamp_min(0.0).flip(0)[:k].sum())


# Power steps that estimate the largest eigenvalue of the Gram matrix off the basis when
# the k-th Ritz value is below it; the estimate only places the shift t (a Cholesky
# factorization proves it), so it may be rough.
SHIFT_POWER_STEPS = 8


def _largest_eigenvalue(C: torch.Tensor) -> float:
    """A power estimate (from below) of the largest eigenvalue of a symmetric PSD matrix."""
    gen = torch.Generator(device=C.device).manual_seed(0)
    X = torch.randn(C.shape[0], 4, generator=gen, device=C.device, dtype=C.dtype)
    for _ in range(SHIFT_POWER_STEPS):
        X = C @ X
        X = X / X.norm(dim=0).clamp_min(1e-300)
    return float(((C @ X) * X).sum(dim=0).max())


def schur_bound(
    gram: torch.Tensor,
    W: torch.Tensor,
    k: int,
    GW: torch.Tensor | None = None,
    H11: torch.Tensor | None = None,
) -> float:
    """An upper bound on the sum of the k largest eigenvalues of `gram` (symmetric PSD,
    float64), from an orthonormal float64 basis W of nearly its top eigenvectors; no eigensolver
    on the full matrix. G W and W^T G W are formed unless the caller has them.

    With R = (I - W W^T) G W and
    C = (I - W W^T) G (I - W W^T), a shift t with t I - C positive definite (proved by a
    Cholesky factorization L L^T = t I - C) bounds every unit vector x = W a + v:
    x^T (G - t I) x <= a^T S a with S = W^T G W - t I + R^T (t I - C)^{-1} R (the largest
    value of the cross terms over v, a Schur complement). Summed over k orthonormal
    vectors (Ky Fan), the top-k sum of G is at most k t + sum of the k largest positive
    eigenvalues of the small matrix S. It is tight when W nearly holds G's top
    eigenvectors and t lies below the k-th of them (a delta whose head stands above its
    noise); otherwise it is loose (or infinite) and the caller takes the exact eigenvalues.

    Rounding: a Cholesky factorization that succeeds in floating point proves t I - C + E
    positive definite with ||E|| <= (n + 1) n u (t + tr C); the bound uses t + that margin.
    """
    n = gram.shape[0]
    trace = float(gram.diagonal().sum())
    if trace <= 0.0:
        return 0.0
    if GW is None:
        GW = gram @ W
    if H11 is None:
        H11 = W.T @ GW
        H11 = (H11 + H11.T) / 2
    R = GW - W @ H11
    # C = G - W GW^T - GW W^T + W H11 W^T = G - W R^T - GW W^T; only its lower triangle
    # is factorized, and the power steps need no exact symmetry.
    C = torch.addmm(gram, W, R.T, alpha=-1).addmm_(GW, W.T, alpha=-1)

    def factor(t: float) -> torch.Tensor | None:  # the Cholesky factor of t I - C, if any
        shifted = torch.neg(C)
        shifted.diagonal().add_(t)
        L, info = torch.linalg.cholesky_ex(shifted)
        return None if int(info) else L

    # The shift: just below the k-th Ritz value when C's spectrum lies under it (the bound
    # is then tightest), else above a power estimate of C's largest eigenvalue.
    ritz_k = float(small_eigh(H11)[0][-k]) if k <= H11.shape[0] else 0.0
    t = 0.9 * ritz_k
    L = factor(t) if t > 0.0 else None
    if L is None:
        t = max(1.05 * _largest_eigenvalue(C), 1e-12 * trace)
        for _ in range(6):
            if (L := factor(t)) is not None:
                break
            t *= 1.5
        else:
            return math.inf
    unit = torch.finfo(gram.dtype).eps / 2
    t += (n + 1) * n * unit * (t + trace)
    Y = torch.linalg.solve_triangular(L, R, upper=False)
    S = torch.addmm(H11, Y.T, Y)
    S.diagonal().sub_(t)
    top = small_eigh(S)[0].flip(0)[:k].clamp_min(0.0)
    return k * t + float(top.sum())


def energy_gap(
    S: torch.Tensor,
    fro_sq: float,
    tops: Sequence[Callable[[], float]],
    sketch_sq: float | None = None,
) -> float:
    """A-posteriori bound on the top-k energy that factors with singular values S miss.

    The factors capture sum(S**2) of the energy. S are the singular values of Q^T dW (the
    sketch) or the square roots of the Gram matrix's Ritz values on a subspace; either
    way S_i <= sigma_i(dW) for every i (interlacing), so the share they miss at any rank
    r <= k is at most the share missed at k. The bounds, cheapest first; the first within
    GAP_TOLERANCE is returned, else the last:
    - free: ||dW - Q Q^T dW||_F**2 = ||dW||_F**2 - ||Q^T dW||_F**2 (`sketch_sq`), tight when
      the sketch holds nearly all of dW (a low-rank delta);
    - `tops`: upper bounds on the true top-k energy, the last one exact
      (`schur_bound`, then the Gram matrix's eigenvalues).
    Returned as a share of ||dW||_F**2 (0 for a zero delta), plus ROUNDING_SLACK of the
    captured share for the fp32 rounding of S and ||dW||_F**2.
    """
    if fro_sq <= 0.0:
        return 0.0
    captured = float((S.double() ** 2).sum())
    slack = ROUNDING_SLACK * captured / fro_sq
    if sketch_sq is not None and (fro_sq - sketch_sq) / fro_sq + slack <= GAP_TOLERANCE:
        return max(0.0, fro_sq - sketch_sq) / fro_sq + slack
    gap = math.inf
    for top in tops:
        gap = max(0.0, top() - captured) / fro_sq + slack
        if gap <= GAP_TOLERANCE:
            break
    return gap
