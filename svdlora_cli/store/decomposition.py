"""The record the store keeps per tensor: top-k factors of dW, its norm and how they were made.

It lives here, below `spectra/`, so the store can read and write it without importing the
code that computes it (`spectra/decompose.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Decomposition:
    """Top-k factors of dW = U diag(S) Vh, with the spectrum and the true ||dW||_F**2."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor
    fro_sq: float
    method: str
    complete: bool
    iterations: int = 0  # power iterations run (randomized)
    gap_bound: float = 0.0  # certified bound on the missed top-k energy / ||dW||_F**2

    @property
    def k(self) -> int:
        return int(self.U.shape[1])

    def sliced(self, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """U_r, S_r, Vh_r for any rank up to k."""
        if rank > self.k:
            raise ValueError(f"rank {rank} exceeds the {self.k} stored factors")
        return self.U[:, :rank], self.S[:rank], self.Vh[:rank]
