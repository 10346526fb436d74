"""The training loss: summed cross-entropy over answer tokens, on padded or packed batches."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..data import IGNORE_INDEX


def loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over answer tokens, and their count.

    The LM head runs only at positions where some row predicts an answer token
    (transformers' `logits_to_keep`), which skips the prompts' share of the
    vocabulary projection and softmax. The batch is padded (with an attention
    mask) or packed (`packing.pack`: one row, position ids and row bounds).
    """
    targets = batch["labels"][:, 1:]
    positions = torch.nonzero((targets != IGNORE_INDEX).any(dim=0)).squeeze(1)
    inputs: dict[str, Any] = {k: v for k, v in batch.items() if k != "labels"}
    if "position_ids" in inputs:  # packed: transformers honours row bounds only without a cache
        inputs["use_cache"] = False
    try:
        logits = model(**inputs, logits_to_keep=positions).logits
        targets = targets[:, positions]
    except TypeError:  # a model without logits_to_keep: full logits
        logits = model(**inputs).logits[:, :-1]
    keep = targets != IGNORE_INDEX
    loss = F.cross_entropy(logits[keep].float(), targets[keep], reduction="sum")
    return loss, int(keep.sum())
