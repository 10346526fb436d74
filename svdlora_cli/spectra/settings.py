"""The `svd` step's settings, checked without torch: `svd` checks its options before any
work, and its warm path (every decomposition and the verdict cached) imports no torch."""

from __future__ import annotations

from ..errors import InvalidOptionError

# The decomposition methods (spectra/decompose.py implements them).
METHODS = ("auto", "exact", "randomized")


def check_settings(
    rank: int | None,
    energy: float | None,
    max_rank: int,
    method: str,
    cache_rank: int,
    oversample: int | None,
    power_iters: int,
) -> None:
    """The decomposition options, each checked here only (`svd` checks them before any work)."""
    checks = [
        (
            rank is not None or energy is not None,
            "no rank given",
            "pass --rank R (e.g. 16) or --energy E (e.g. 0.9)",
        ),
        (rank is None or energy is None, "--rank and --energy are exclusive", "pass one of them"),
        (
            rank is None or rank > 0,
            f"--rank must be a positive integer, got {rank}",
            "use e.g. --rank 16",
        ),
        (  # NaN and inf fail the comparison too
            energy is None or 0.0 < energy <= 1.0,
            f"--energy must be in (0, 1], got {energy}",
            "use e.g. --energy 0.9",
        ),
        (max_rank > 0, f"--max-rank must be positive, got {max_rank}", "use e.g. --max-rank 64"),
        (
            cache_rank >= 0,
            f"--cache-rank must be >= 0, got {cache_rank}",
            "use e.g. --cache-rank 64",
        ),
        (method in METHODS, f"unknown --method {method!r}", f"use one of: {', '.join(METHODS)}"),
        (
            oversample is None or oversample >= 0,
            f"--oversample must be >= 0, got {oversample}",
            "leave it out (k/2) or use e.g. --oversample 8",
        ),
        (
            power_iters >= 0,
            f"--power-iters must be >= 0, got {power_iters}",
            "use e.g. --power-iters 3",
        ),
    ]
    for ok, message, hint in checks:
        if not ok:
            raise InvalidOptionError(message, hint)


def svd_label(rank: int | None, energy: float | None) -> str:
    """`rank16` or `energy90`: the suffix of every `svd` artifact name."""
    if rank is not None:
        return f"rank{rank}"
    return f"energy{100 * (energy or 0):g}"
