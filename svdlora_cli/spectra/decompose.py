"""Truncated SVD of a weight delta (exact or randomized) and spectrum metrics.

Decompositions run in fp32; sums of squares are accumulated in float64 (`sum_squares`). The energy
ratio at rank r is sum(S[:r]**2) / ||dW||_F**2 with ||dW||_F taken from the
matrix itself, so a truncated (randomized) spectrum cannot flatter it. A randomized
decomposition is certified (`certificate.py`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ..store.decomposition import Decomposition
from .certificate import (
    GAP_TOLERANCE,
    ROUNDING_SLACK,
    energy_gap,
    gram_matrix,
    schur_bound,
    small_eigh,
    top_eigenvalues,
)
from .truncation import captured_energy, truncation_energy

ENERGY_LEVELS = (0.5, 0.9, 0.95, 0.99)
POWER_ITERS = 3  # the least number of power iterations; more run until certified
MAX_POWER_ITERS = 8
# Up to this min(out, in) (or 4k), `auto` takes the exact SVD and its full spectrum; above
# it a randomized SVD of the top k is several times faster at the same captured energy.
EXACT_MAX_DIM = 256


def resolve_method(method: str, shape: tuple[int, int], k: int) -> str:
    """`auto` is exact for small matrices or large ranks, randomized otherwise."""
    if method != "auto":
        return method
    small = min(shape)
    return "exact" if small <= max(EXACT_MAX_DIM, 4 * k) else "randomized"


def sum_squares(values: torch.Tensor) -> float:
    """sum(x**2) over a tensor of any shape, accumulated in float64 chunk by chunk.

    An fp32 dot product over millions of elements (one MLP matrix) is off by a few 1e-5
    of the total (measured: 2.5e-5 on 4.4M elements), which shows in the 4th decimal of
    an energy share; float64 chunks of 1M elements cost about 2 ms per 4M on a CPU. The
    sum stays on the tensor's device to the end: one host read (a GPU sync), not one per
    chunk; the additions are the same float64 ones, so the result is the same bits.
    """
    total = torch.zeros((), dtype=torch.float64, device=values.device)
    for chunk in torch.split(values.reshape(-1), 1 << 20):
        wide = chunk.double()
        total += torch.dot(wide, wide)
    return float(total)


def frobenius_sq(matrix: torch.Tensor) -> float:
    """||M||_F**2, accumulated in float64 (`sum_squares`)."""
    return sum_squares(matrix)


def svd_exact(dw: torch.Tensor, k: int, fro_sq: float | None = None) -> Decomposition:
    """Full SVD: the whole spectrum plus the top-k singular vectors."""
    U, S, Vh = torch.linalg.svd(dw, full_matrices=False)
    k = min(k, S.shape[0])
    return Decomposition(
        U=U[:, :k].contiguous(),
        S=S.contiguous(),
        Vh=Vh[:k].contiguous(),
        fro_sq=frobenius_sq(dw) if fro_sq is None else fro_sq,
        method="exact",
        complete=True,
    )


def svd_randomized(
    dw: torch.Tensor,
    k: int,
    oversample: int | None = None,
    power_iters: int = POWER_ITERS,
    seed: int = 0,
    fro_sq: float | None = None,
    tolerance: float | None = GAP_TOLERANCE,
    max_iters: int = MAX_POWER_ITERS,
) -> Decomposition:
    """Randomized range finder with subspace iteration (Halko, Martinsson & Tropp 2011,
    Alg. 4.4), certified (`energy_gap`).

    The sketch Q = orth(dW Omega) has q = k + oversample columns (default k/2, at least 8).
    When it holds all but `tolerance` of ||dW||_F**2 (a low-rank delta), the SVD of Q^T dW
    is the result: no power iteration and no Gram matrix. Otherwise the power iterations
    run on the float64 Gram matrix G of dW's smaller side (each product with G is one
    power iteration of dW dW^T, at n x n x q instead of two m x n x q products), from the
    sketch's basis on that side; the Gram matrix then serves the certificate too. After
    `power_iters` of them, Rayleigh-Ritz gives the factors and the bound; while the
    missed top-k energy exceeds `tolerance`, one more runs, up to `max_iters`.
    `gap_bound` records the final bound and `iterations` the count, so a caller can tell a
    certified result from one that ran out of iterations (`auto` then falls back to the
    exact SVD). `tolerance=None` runs exactly `power_iters` and still records the bound.
    """
    m, n = dw.shape
    small = min(m, n)
    k = min(k, small)
    fro_sq = frobenius_sq(dw) if fro_sq is None else fro_sq
    q = min(small, k + (max(8, k // 2) if oversample is None else oversample))
    gen = torch.Generator(device=dw.device).manual_seed(seed)
    omega = torch.randn(n, q, generator=gen, device=dw.device, dtype=dw.dtype)
    Q, _ = torch.linalg.qr(dw @ omega)
    B = Q.T @ dw
    sketch_sq = sum_squares(B)
    missed = (fro_sq - sketch_sq + ROUNDING_SLACK * sketch_sq) / fro_sq if fro_sq > 0 else 0.0
    if tolerance is not None and missed <= GAP_TOLERANCE:
        Ub, S, Vh = torch.linalg.svd(B, full_matrices=False)
        gap = energy_gap(S[:k], fro_sq, (), sketch_sq)
        return _randomized_result(Q @ Ub, S, Vh, k, fro_sq, small, 0, gap)
    tall = n <= m
    gram = gram_matrix(dw)
    exact = functools.cache(lambda: top_eigenvalues(gram, k))
    Z, _ = torch.linalg.qr((B.T if tall else Q).double())
    iterations, previous = 0, math.inf
    while True:
        GZ = gram @ Z
        if iterations >= power_iters:
            H = Z.T @ GZ
            H = (H + H.T) / 2  # also the Schur bound's W^T G W
            theta, E = small_eigh(H)
            theta, E = theta.flip(0), E.flip(1)
            S = theta.clamp_min(0.0).sqrt()
            tops = (functools.partial(schur_bound, gram, Z, k, GZ, H), exact)
            gap = energy_gap(S[:k], fro_sq, tops)
            # Stop when certified, out of iterations, or converging too slowly to get there.
            rate = min(1.0, gap / previous)
            hopeless = tolerance is not None and gap * rate ** (max_iters - iterations) > tolerance
            if tolerance is None or gap <= tolerance or iterations >= max_iters or hopeless:
                break
            previous = gap
        Z, _ = torch.linalg.qr(GZ)
        iterations += 1
    # Ritz vectors on the Gram's side; the other side's vectors are dW's images of them,
    # orthonormalised (their signs kept, so that U S Vh is dW projected on the Ritz space).
    ritz = (Z @ E[:, :k]).to(dw.dtype)
    image, R = torch.linalg.qr(dw @ ritz if tall else dw.T @ ritz)
    signs = torch.where(R.diagonal() < 0, -1.0, 1.0).to(image.dtype)
    image = image * signs
    U, Vh = (image, ritz.T) if tall else (ritz, image.T)
    return _randomized_result(U, S.to(dw.dtype), Vh, k, fro_sq, small, iterations, gap)


def _randomized_result(
    U: torch.Tensor,
    S: torch.Tensor,
    Vh: torch.Tensor,
    k: int,
    fro_sq: float,
    small: int,
    iterations: int,
    gap: float,
) -> Decomposition:
    return Decomposition(
        U=U[:, :k].contiguous(),
        S=S[:k].contiguous(),
        Vh=Vh[:k].contiguous(),
        fro_sq=fro_sq,
        method="randomized",
        complete=small == k,
        iterations=iterations,
        gap_bound=gap,
    )


def decompose(
    dw: torch.Tensor,
    k: int,
    method: str = "auto",
    oversample: int | None = None,
    power_iters: int = POWER_ITERS,
    seed: int = 0,
    fro_sq: float | None = None,
    max_iters: int = MAX_POWER_ITERS,
) -> Decomposition:
    """Top-k SVD of a 2-D fp32 delta with the chosen method; results live on the CPU.

    `fro_sq` is ||dW||_F**2 when the caller already has it (it is computed otherwise).
    `auto` takes the exact SVD for a module whose randomized result it cannot certify
    within GAP_TOLERANCE; `randomized` keeps it and records its bound (`gap_bound`).
    """
    resolved = resolve_method(method, (int(dw.shape[0]), int(dw.shape[1])), k)
    result = None
    if resolved == "randomized":
        result = svd_randomized(
            dw, k, oversample, power_iters, seed, fro_sq, max_iters=max(power_iters, max_iters)
        )
        if method == "auto" and result.gap_bound > GAP_TOLERANCE:
            result = None
    if result is None:
        result = svd_exact(dw, k, fro_sq)
    result.U, result.S, result.Vh = (t.cpu() for t in (result.U, result.S, result.Vh))
    return result


def _captured(dec: Decomposition) -> list[float]:
    """Entry r is the squared Frobenius norm held by the rank-r truncation (float64)."""
    return captured_energy((dec.S.double() ** 2).tolist(), dec.fro_sq, dec.complete)


@dataclass(frozen=True)
class SpectrumStats:
    """What a spectrum says at a chosen rank."""

    energy: float
    rel_error: float
    rank_for: dict[float, int | None]
    effective_rank: float | None
    stable_rank: float


def spectrum_stats(dec: Decomposition, rank: int) -> SpectrumStats:
    """Energy and relative Frobenius error of the rank-r truncation, plus rank measures.

    rel_error**2 = 1 - energy (Eckart-Young-Mirsky). The effective rank is Roy &
    Vetterli's exp(entropy of S/sum(S)), known only from a complete spectrum; the
    stable rank is ||dW||_F**2 / s_1**2.
    """
    fro_sq = dec.fro_sq
    if fro_sq <= 0.0:
        return SpectrumStats(1.0, 0.0, dict.fromkeys(ENERGY_LEVELS, 0), 0.0, 0.0)
    captured = _captured(dec)
    energy, rel_error = truncation_energy(captured, fro_sq, rank)
    rank_for: dict[float, int | None] = {}
    for level in ENERGY_LEVELS:
        rank_for[level] = next(
            (r for r in range(1, len(captured)) if captured[r] / fro_sq >= level - 1e-12), None
        )
    effective = None
    if dec.complete:
        s = dec.S.double()
        p = s[s > 0] / float(s.sum())
        effective = math.exp(float(-(p * p.log()).sum()))
    top = float(dec.S[0]) if dec.S.numel() else 0.0
    stable = fro_sq / top**2 if top > 0 else 0.0
    return SpectrumStats(energy, rel_error, rank_for, effective, stable)


def rank_for_energy(dec: Decomposition, energy: float, max_rank: int) -> int:
    """Smallest rank whose energy reaches `energy`, capped by max_rank and the stored factors."""
    cap = max(1, min(max_rank, dec.k))
    if dec.fro_sq <= 0.0:
        return 1
    captured = _captured(dec)
    return next((r for r in range(1, cap + 1) if captured[r] / dec.fro_sq >= energy - 1e-12), cap)
