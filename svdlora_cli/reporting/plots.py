"""The seed's four-panel svd_analysis_rank{R}.png, drawn with matplotlib's Agg backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_path
from .columns import pct


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Write a figure atomically as PNG and free it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)
    return path


def _representatives(
    modules: Sequence[Mapping[str, Any]], limit: int = 6
) -> list[Mapping[str, Any]]:
    """First, middle and last layer of one attention and one MLP module type."""
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for m in modules:
        by_type.setdefault(m["module_type"], []).append(m)
    per_group: dict[str, list[Mapping[str, Any]]] = {}
    for rows in by_type.values():
        per_group.setdefault(rows[0]["group"], rows)
    chosen = []
    for rows in list(per_group.values())[:2]:
        picks = {0, len(rows) // 2, len(rows) - 1}
        chosen += [rows[i] for i in sorted(picks)]
    return chosen[:limit]


def _cumulative_energy(m: Mapping[str, Any]) -> np.ndarray:
    s = np.asarray(m["singular_values"], dtype=np.float64)
    total = m["delta_norm"] ** 2
    return np.cumsum(s**2) / total if total > 0 else np.ones_like(s)


def svd_analysis_png(doc: Mapping[str, Any], path: Path, dpi: int = 110) -> Path:
    """Spectra of representative layers, energy vs rank, mean decay, per-layer energy heatmap."""
    plt = pyplot()

    modules = [m for m in doc["modules"] if not m["zero_delta"]]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5))
    ax = axes[0][0]
    for m in _representatives(modules):
        s = np.asarray(m["singular_values"])
        ax.semilogy(np.arange(1, len(s) + 1), s / s[0], label=m["name"], lw=1.2)
    ax.set(title="Singular value spectra (normalised by s1)", xlabel="index", ylabel="s_i / s_1")
    ax.legend(fontsize=7)

    ax = axes[0][1]
    types: dict[str, list[np.ndarray]] = {}
    for m in modules:
        types.setdefault(m["module_type"], []).append(_cumulative_energy(m))
    for name, curves in types.items():
        n = min(len(c) for c in curves)
        ax.plot(np.arange(1, n + 1), np.mean([c[:n] for c in curves], axis=0), label=name, lw=1.2)
    rank = doc["rank"]
    if rank is not None:
        ax.axvline(rank, color="k", ls="--", lw=0.8, label=f"r = {rank}")
    ax.set(
        title="Energy captured vs rank (mean per module type)",
        xlabel="rank",
        ylabel="energy",
        ylim=(0, 1.02),
    )
    ax.set_xscale("log")
    ax.legend(fontsize=7)

    ax = axes[1][0]
    if modules:
        n = min(len(m["singular_values"]) for m in modules)
        normalised = np.array(
            [np.asarray(m["singular_values"][:n]) / m["singular_values"][0] for m in modules]
        )
        mean = normalised.mean(axis=0)
        idx = np.arange(1, n + 1)
        ax.loglog(idx, mean, color="C0", lw=1.5, label="mean")
        ax.fill_between(
            idx,
            np.percentile(normalised, 10, axis=0),
            np.percentile(normalised, 90, axis=0),
            color="C0",
            alpha=0.2,
            label="10-90th percentile",
        )
        ax.legend(fontsize=7)
    ax.set(title="Mean singular value decay", xlabel="index", ylabel="s_i / s_1")

    ax = axes[1][1]
    layers = sorted({m["layer"] for m in doc["modules"] if m["layer"] is not None})
    kinds = sorted({m["module_type"] for m in doc["modules"]})
    grid = np.full((len(kinds), max(1, len(layers))), np.nan)
    for m in doc["modules"]:
        col = layers.index(m["layer"]) if m["layer"] is not None else 0
        grid[kinds.index(m["module_type"]), col] = m["energy"]
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(kinds)), kinds, fontsize=7)
    ax.set(
        title=f"Energy at {'r = ' + str(rank) if rank is not None else 'chosen rank'} per layer",
        xlabel="layer",
    )
    if layers:
        step = max(1, len(layers) // 16)
        ax.set_xticks(range(0, len(layers), step), [str(v) for v in layers[::step]])
    fig.colorbar(image, ax=ax, label="energy")
    fig.suptitle(
        f"dW spectra: mean energy {pct(doc['summary']['mean_energy'])}, "
        f"total {pct(doc['summary']['total_energy'])}"
    )
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def layer_heatmap_png(doc: Mapping[str, Any], path: Path, value: str = "rank_90") -> Path:
    """Layer x module type, coloured by the rank needed for 90% of ||dW||^2."""
    plt = pyplot()

    rows = doc["modules"]
    layers = sorted({r["layer"] for r in rows if r["layer"] is not None}) or [0]
    kinds = sorted({r["module_type"] for r in rows})
    grid = np.full((len(kinds), len(layers)), np.nan)
    for r in rows:
        col = layers.index(r["layer"]) if r["layer"] is not None else 0
        if r[value] is not None:
            grid[kinds.index(r["module_type"]), col] = r[value]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers) + 3), 0.45 * len(kinds) + 2))
    image = ax.imshow(grid, aspect="auto", cmap="magma_r", interpolation="nearest")
    ax.set_yticks(range(len(kinds)), kinds, fontsize=8)
    step = max(1, len(layers) // 24)
    ax.set_xticks(range(0, len(layers), step), [str(v) for v in layers[::step]], fontsize=8)
    ax.set(
        xlabel="layer", title=f"{value.replace('_', ' ')} of dW per module (lower = more low-rank)"
    )
    fig.colorbar(image, ax=ax, label=value)
    fig.tight_layout()
    return save_figure(fig, path, 110)


def sweep_png(doc: Mapping[str, Any], path: Path) -> Path:
    """Energy captured and relative error against rank, per module type and overall."""
    plt = pyplot()

    rows = doc["ranks"]
    ranks = [r["rank"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, key, overall in (
        (left, "total_energy", "all targets"),
        (right, "mean_rel_error", "mean"),
    ):
        axis.plot(ranks, [r[key] for r in rows], "k-o", lw=2, label=overall)
        for i, kind in enumerate(rows[0]["by_module_type"]):
            by_kind = [r["by_module_type"][kind][key] for r in rows]
            axis.plot(ranks, by_kind, "-", color=f"C{i}", label=kind)
    left.set(title="Energy captured vs rank", xlabel="rank", ylabel="energy", ylim=(0, 1.02))
    right.set(
        title="Relative error ||dW - B A|| / ||dW||",
        xlabel="rank",
        ylabel="relative error",
        ylim=(0, 1.02),
    )
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, 110)


def rank_study_png(study: Mapping[str, Any], path: Path) -> Path:
    """Final loss of the SVD-init student per rank, with the random student as a reference."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ranks = [s["rank"] for s in study["svd"]]
    ax.plot(
        ranks, [s["final_loss"] for s in study["svd"]], "C1-o", label="svd init: final train loss"
    )
    evals = [s["final_eval_loss"] for s in study["svd"]]
    if all(v is not None for v in evals):
        ax.plot(ranks, evals, "C1--s", label="svd init: final eval loss")
    random = study["random"]
    ax.axhline(
        random["final_loss"], color="C0", label=f"random r={random['rank']}: final train loss"
    )
    if random.get("final_eval_loss") is not None:
        ax.axhline(random["final_eval_loss"], color="C0", ls="--", label="random: final eval loss")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.set(title="Rank study: final loss against LoRA rank", xlabel="rank", ylabel="loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, 110)
