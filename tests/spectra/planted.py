"""Deltas with a chosen spectrum, for the SVD and certificate tests."""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch


def planted(m: int, n: int, s: np.ndarray, seed: int = 0) -> torch.Tensor:
    """U diag(s) V^T with random orthonormal U, V: a spectrum chosen exactly."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, len(s))))
    v, _ = np.linalg.qr(rng.standard_normal((n, len(s))))
    return torch.tensor((u * s) @ v.T, dtype=torch.float32)


FLAT = 1.0 / np.arange(1, 301) ** 0.3  # slow decay: the range finder converges slowly


def head_over_noise(m: int, n: int, rank: int, seed: int = 0) -> torch.Tensor:
    """A rank-`rank` head with s_i ~ i^-0.5 (80% of the norm) over dense noise (20%): the
    shape of benchmarks/make_pair.py's planted deltas and of a real fine-tune's dW."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(m, rank, generator=gen)
    v = torch.randn(rank, n, generator=gen)
    head = (u * torch.arange(1, rank + 1) ** -0.5) @ v
    noise = torch.randn(m, n, generator=gen)
    return head / head.norm() * 0.8 + noise / noise.norm() * 0.2


def decaying(m: int, n: int, seed: int = 0, decay: float = 0.8) -> torch.Tensor:
    """A matrix with a geometrically decaying spectrum."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, min(m, n))))
    v, _ = np.linalg.qr(rng.standard_normal((n, min(m, n))))
    s = decay ** np.arange(min(m, n))
    return torch.tensor((u * s) @ v.T, dtype=torch.float32)


def true_gap(dw: torch.Tensor, dec, k: int) -> float:
    """Missed top-k energy share, from scipy's float64 singular values (independent)."""
    s = scipy.linalg.svdvals(dw.double().numpy())
    fro_sq = float((s**2).sum())
    return (float((s[:k] ** 2).sum()) - float((dec.S[:k].double() ** 2).sum())) / fro_sq
