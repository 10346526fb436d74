"""The training loss: summed cross-entropy over answer tokens, on padded or packed batches."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..data import IGNORE_INDEX

# Keys of a batch that are bookkeeping, not model inputs.
TARGET_KEYS = ("labels", "logit_positions", "answer_tokens")


def with_targets(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch plus where the LM head must run and how many answer tokens it scores.

    Computed on the host, where the batch is built, so the training step never reads a
    device tensor back to decide either (each read would stall the GPU).
    """
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    return {
        **batch,
        "logit_positions": torch.nonzero(keep.any(dim=0)).squeeze(1),
        "answer_tokens": int(keep.sum()),
    }


def loss_sum(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over answer tokens, and their count.

    The LM head runs only at positions where some row predicts an answer token
    (transformers' `logits_to_keep`), which skips the prompts' share of the
    vocabulary projection and softmax. The batch is padded (with an attention
    mask) or packed (`packing.pack`: one row, position ids and row bounds); a batch
    without `with_targets`'s keys gets them here.
    """
    if "logit_positions" not in batch:
        batch = with_targets(batch)
    positions = batch["logit_positions"]
    inputs: dict[str, Any] = {k: v for k, v in batch.items() if k not in TARGET_KEYS}
    if "position_ids" in inputs:  # packed: transformers honours row bounds only without a cache
        inputs["use_cache"] = False
    targets = batch["labels"][:, 1:]
    try:
        logits = model(**inputs, logits_to_keep=positions).logits
        targets = targets[:, positions]
    except TypeError:  # a model without logits_to_keep: full logits
        logits = model(**inputs).logits[:, :-1]
    loss = F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss, batch["answer_tokens"]
