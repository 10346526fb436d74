"""A passed verdict carried from a PEFT-checked adapter to its sibling at another rank.

`svd` writes the adapters of one model pair and one set of options at every rank through
one writer: they differ only in `r` and `lora_alpha` (alpha = r, so PEFT's scale is 1 at
every rank) and in the rank dimension of each factor. Once PEFT has loaded one of them into
the model transformers builds and its delta of every module matched the SVD (checks.py:
the structural check, the Gram check of every module, PEFT's own `get_delta_weight` on a
witness per layer class), how PEFT reads that format under these package versions is
proven. What is left to prove for a sibling is its own bytes, and `carried_verdict` proves
it without torch or PEFT:

- its config is the checked one's but for `r` and `lora_alpha`, which are equal, as in
  the checked one (no rank or alpha pattern: one scale of 1 for every module);
- it holds the same modules under the same keys and dtypes, each lora_A (r, in) and lora_B
  (out, r) with the checked one's `in` and `out`;
- each module's scale * B @ A, as the file holds it (safetensors' numpy reader), equals the
  SVD's rank-r factors through the same float64 Gram products and tolerance as the full
  check (`low_rank_gap`).

Anything else gives None, and the caller checks the adapter through PEFT. The carried
verdict says where it came from (`carried_from`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import SvdloraError
from .factors import ADAPTER_WEIGHTS, LowRankFactors, read_adapter_layout
from .low_rank import low_rank_gap

_RANKED = ("r", "lora_alpha")  # the config fields that differ between siblings


def _layout_record(folder: Path) -> dict[str, Any] | None:
    """What a sibling must share with the checked adapter (its config less r and
    lora_alpha, and per module its keys, stored dtypes and (out, in)), and its rank; None
    unless the adapter has one rank and alpha = r."""
    from ..models.formats import format_for

    layout = read_adapter_layout(folder)
    config = layout.config
    if (
        config["r"] != config["lora_alpha"]
        or config.get("rank_pattern")
        or config.get("alpha_pattern")
    ):
        return None
    infos = format_for(folder / ADAPTER_WEIGHTS).header(folder / ADAPTER_WEIGHTS)
    modules = {}
    for module, (a, b) in layout.keys.items():
        (rank_a, fan_in), (fan_out, rank_b) = layout.shapes[module]
        if rank_a != config["r"] or rank_b != config["r"]:
            return None
        modules[module] = [a, b, infos[a].dtype, infos[b].dtype, fan_out, fan_in]
    return {
        "config": {k: v for k, v in config.items() if k not in _RANKED},
        "modules": modules,
        "rank": config["r"],
    }


def sibling_record(adapter: str | Path, verdict: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a later run needs to carry `verdict` (PEFT's, passed, without the probe) to a
    sibling of `adapter`; None when the adapter is not of the carried kind."""
    if verdict.get("probe") is not None or verdict.get("carried_from") is not None:
        return None  # a logits probe proves per adapter; only PEFT's own checks carry
    layout = _layout_record(Path(adapter))
    if layout is None:
        return None
    return {**layout, "verdict": dict(verdict)}


def carried_verdict(
    adapter: str | Path, sibling: Mapping[str, Any], factors: Mapping[str, LowRankFactors]
) -> dict[str, Any] | None:
    """The sibling's verdict for `adapter` when it has the same format and its every module
    equals `factors` (B, A: the SVD's rank-r factors, numpy or torch); else None."""
    from safetensors.numpy import load_file

    folder = Path(adapter)
    try:
        layout = _layout_record(folder)
        if layout is None or {k: layout[k] for k in ("config", "modules")} != {
            k: sibling[k] for k in ("config", "modules")
        }:
            return None
        tensors = load_file(str(folder / ADAPTER_WEIGHTS))
    except (SvdloraError, OSError, ValueError, KeyError):
        return None
    if set(factors) != set(layout["modules"]):
        return None
    verdict = copy.deepcopy(dict(sibling["verdict"]))
    deltas = verdict["structural"]["deltas"]
    worst = 0.0
    for module, (a, b, *_) in layout["modules"].items():
        expected = factors[module]
        gap, theirs, mine = low_rank_gap(tensors[b], tensors[a], expected.B, expected.A)  # scale 1
        relative = gap / max(mine, 1e-30)
        if relative > deltas["tolerance"] or (mine > 0) != (theirs > 0):
            return None
        worst = max(worst, relative)
    deltas["max_rel_diff"] = worst
    verdict["carried_from"] = {
        "rank": sibling["rank"],
        "how": "PEFT loaded and checked the rank-"
        f"{sibling['rank']} adapter of the same run; this one has its format and its own "
        "bytes equal its factors (float64 Gram products, same tolerance)",
    }
    return verdict
