"""Packed micro-batches: a micro-batch's rows laid end to end in one sequence, no padding.

The rows of a micro-batch are concatenated into one row of length sum(len_i), with
position ids restarting at 0 for each row, and attention runs causally within each row
only (`packed_attention`, one scaled-dot-product call per row). Every row sees exactly
what it sees in a right-padded batch, so the loss and its gradient are the same up to
float rounding, while no FLOP is spent on padding, the LM head runs only where an
answer token is predicted, and attention costs sum(len_i^2) instead of B x max_len^2.

Batch composition is untouched: the schedule still decides which rows share a step,
so every arm of an experiment sees identical batches. `check_packing` compares the
packed and the padded loss of a real micro-batch before training and falls back to
padded batches (with a warning) for a model whose attention ignores the row bounds.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..data import IGNORE_INDEX, TokenizedSet, collate
from .loss import loss_sum

ATTENTION = "svdlora_packed"
# Relative gap between packed and padded loss above which packing is refused: fp32
# rounding differences are about 1e-7; bf16/fp16 weights get more room.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-6}
LOW_PRECISION_TOLERANCE = 2e-2
log = logging.getLogger("svdlora")


def packed_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed row ([batch, heads, tokens, dim] in, [batch,
    tokens, heads, dim] out, as transformers' attention functions). A batch that is not
    packed (no row bounds) gets transformers' own SDPA attention with its mask."""
    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    # split (not slicing): its backward is one concatenation of the rows' gradients,
    # where each slice's backward would zero-fill and copy a whole-sequence tensor.
    lengths = [int(end - start) for start, end in itertools.pairwise(bounds.tolist())]
    gqa = query.shape[1] != key.shape[1]
    parts = [
        F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=dropout, scale=scaling, enable_gqa=gqa
        )
        for q, k, v in zip(
            query.split(lengths, dim=2),
            key.split(lengths, dim=2),
            value.split(lengths, dim=2),
            strict=True,
        )
    ]
    return torch.cat([part.transpose(1, 2) for part in parts], dim=1), None  # contiguous


def register() -> None:
    """Make `ATTENTION` a transformers attention implementation (idempotent)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(ATTENTION, packed_attention)
    # SDPA's masks: packed rows ignore theirs (the bounds say it all), padded batches need it.
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def pack(indices: Sequence[int], data: TokenizedSet) -> dict[str, torch.Tensor]:
    """One packed row: input ids, labels, position ids and the rows' bounds.

    Each row's first label is set to IGNORE_INDEX: it sits right after the previous row's
    last token, and in a padded batch the first label is never a target either.
    """
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    bounds = [0]
    for i in indices:
        row = data.input_ids[i]
        ids.extend(row)
        labels.extend([IGNORE_INDEX, *data.labels[i][1:]])
        positions.extend(range(len(row)))
        bounds.append(bounds[-1] + len(row))
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "cu_seq_lens_q": torch.tensor(bounds, dtype=torch.int32),
    }


def unsupported_reason(model: Any, max_length: int) -> str | None:
    """Why this model cannot train on packed rows, or None when it can."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "set_attn_implementation"):
        return "it is not a transformers model with switchable attention"
    if getattr(config, "attn_logit_softcapping", None):
        return "its attention soft-caps logits"
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and window < max_length:
        return f"its sliding window ({window}) is shorter than --max-length ({max_length})"
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    if kinds - {"full_attention", "sliding_attention"}:
        return f"it has {', '.join(sorted(kinds - {'full_attention'}))} layers"
    return None


def enable(model: Any) -> str:
    """Switch the model to packed attention; returns the implementation to restore."""
    register()
    previous = str(getattr(model.config, "_attn_implementation", None) or "sdpa")
    model.set_attn_implementation(ATTENTION)
    return previous


def agree(packed: float, padded: float, dtype: torch.dtype) -> bool:
    """Whether two losses agree within the weights' precision."""
    tolerance = TOLERANCE.get(dtype, LOW_PRECISION_TOLERANCE)
    return abs(packed - padded) <= tolerance * max(abs(padded), 1e-12)


def make_batcher(
    model: Any,
    unwrapped: Any,
    data: TokenizedSet,
    pad_id: int,
    enabled: bool,
    max_length: int,
    to_device: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
) -> Callable[[Sequence[int], TokenizedSet], dict[str, torch.Tensor]]:
    """The batch builder `fit` uses: packed rows when the model allows it, else padding.

    `model` is the prepared (possibly wrapped) model, `unwrapped` the transformers model
    whose attention is switched. With packing on, the packed and padded loss of the data's
    first rows are compared once (every process runs the same forwards); a gap beyond the
    weights' precision turns packing off with a warning.
    """

    def padded(indices: Sequence[int], rows: TokenizedSet) -> dict[str, torch.Tensor]:
        return collate(indices, rows, pad_id)

    if not enabled:
        return padded
    reason = unsupported_reason(unwrapped, max_length)
    if reason is None:
        sample = list(range(min(2, len(data))))
        was_training = model.training
        model.eval()
        with torch.no_grad():
            reference, _ = loss_sum(model, to_device(collate(sample, data, pad_id)))
            previous = enable(unwrapped)
            packed, _ = loss_sum(model, to_device(pack(sample, data)))
        model.train(was_training)
        dtype = next(unwrapped.parameters()).dtype
        if not agree(float(packed), float(reference), dtype):
            unwrapped.set_attn_implementation(previous)
            gap = f"{float(packed):.6g} against {float(reference):.6g}"
            reason = f"its packed loss differs from the padded one ({gap})"
    if reason is not None:
        log.warning("training on padded batches: packing is off for this model because %s", reason)
        return padded
    return pack
