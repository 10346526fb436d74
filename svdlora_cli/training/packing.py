"""Packed micro-batches: a micro-batch's rows laid end to end in one sequence, no padding.

The rows of a micro-batch are concatenated into one row of length sum(len_i), with
position ids restarting at 0 for each row, and attention runs causally within each row
only. Every row sees exactly what it sees in a right-padded batch, so the loss and its
gradient are the same up to float rounding, while no FLOP is spent on padding, the LM
head runs only where an answer token is predicted, and attention costs sum(len_i^2)
instead of B x max_len^2.

The row bounds are known on the host when the batch is built (`PackedRows`), so the
model never reads a tensor back to the host; the kernels that attend within the rows
are in `attention_kernels`.

Batch composition is untouched, so every arm sees identical batches. Before training,
`make_batcher` compares the packed and the padded loss of a real micro-batch kernel by
kernel, and a variable-length kernel's gradients with the per-row SDPA's
(`kernel_grads`); it falls back to padded batches, with a warning, when none agrees.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..data import IGNORE_INDEX, TokenizedSet, collate
from .attention_kernels import KERNEL_FUNCTIONS, PackedRows, kernel_candidates
from .loss import loss_sum, with_targets

ATTENTION = "svdlora_packed"
# Relative gap between packed and padded loss above which a kernel is refused: fp32
# rounding differences are about 1e-7; bf16/fp16 compute gets more room.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-6}
LOW_PRECISION_TOLERANCE = 2e-2
log = logging.getLogger("svdlora")
Batch = dict[str, Any]
Batcher = Callable[[Sequence[int], TokenizedSet], Batch]


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
    """Causal attention within each packed row ([1, heads, tokens, dim] in, [1, tokens,
    heads, dim] out, as transformers' attention functions), by the batch's kernel.

    Only packed batches come here (`make_batcher` restores the model's own attention for
    anything else), so a call without rows is a bug, not a fallback to guess at.
    """
    rows = kwargs.get("packed_rows")
    if not isinstance(rows, PackedRows):
        raise RuntimeError(f"the {ATTENTION} attention needs packed rows (training.packing.pack)")
    if dropout:
        raise RuntimeError("packed attention has no attention dropout; train with it at 0")
    return KERNEL_FUNCTIONS[_exact or rows.kernel](query, key, value, rows, scaling), None


_exact: str | None = None  # set while an fp32 pass runs (`exact_rows`)


@contextlib.contextmanager
def exact_rows() -> Iterator[None]:
    """Packed batches take the per-row SDPA while this lasts: the varlen kernels take
    bf16/fp16 only, and an fp32 evaluation of a bf16 run (eval_precision.py) needs neither
    them nor any device read."""
    global _exact
    before, _exact = _exact, "sdpa_rows"
    try:
        yield
    finally:
        _exact = before


def register() -> None:
    """Make `ATTENTION` a transformers attention implementation (idempotent).

    No mask function is registered: transformers then builds no mask (and reads nothing
    back from the device to look for packed rows), since the row bounds say it all.
    """
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, packed_attention)


def pack(indices: Sequence[int], data: TokenizedSet, kernel: str = "sdpa_rows") -> Batch:
    """One packed row: input ids, labels, position ids and the rows' bounds (host tensors).

    Each row's first label is set to IGNORE_INDEX: it sits right after the previous row's
    last token, and in a padded batch the first label is never a target either.
    """
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    lengths: list[int] = []
    for i in indices:
        row = data.input_ids[i]
        ids.extend(row)
        labels.extend([IGNORE_INDEX, *data.labels[i][1:]])
        positions.extend(range(len(row)))
        lengths.append(len(row))
    bounds = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "packed_rows": PackedRows(tuple(lengths), bounds, kernel),
    }


def row_lengths(batch: Batch) -> list[int]:
    """The real length of each row of a packed or padded host batch."""
    rows = batch.get("packed_rows")
    if rows is not None:
        return list(rows.lengths)
    mask = batch.get("attention_mask")
    if mask is None:
        return [batch["input_ids"].shape[1]] * batch["input_ids"].shape[0]
    return [int(n) for n in mask.sum(dim=1).tolist()]


def logit_count(batch: Batch) -> int:
    """Positions the LM head runs at in a host batch (every row's, for a padded one)."""
    return batch["logit_positions"].numel() * batch["input_ids"].shape[0]


def unsupported_reason(model: Any, max_length: int) -> str | None:
    """Why this model cannot train on packed rows, or None when it can."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "set_attn_implementation"):
        return "it is not a transformers model with switchable attention"
    if getattr(config, "attn_logit_softcapping", None):
        return "its attention soft-caps logits"
    if getattr(config, "attention_dropout", 0.0):
        return "its attention uses dropout"
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


def agree(packed: float, padded: float, low_precision: bool) -> bool:
    """Whether two losses agree within the compute precision."""
    tolerance = LOW_PRECISION_TOLERANCE if low_precision else TOLERANCE[torch.float32]
    return abs(packed - padded) <= tolerance * max(abs(padded), 1e-12)


@dataclass
class Batching:
    """The batch builder `fit` uses, what it settled on, and how to undo it."""

    build: Batcher
    attention: str  # "packed/<kernel>" or "padded"
    restore: Callable[[], None] = lambda: None


def make_batcher(
    model: Any,
    unwrapped: Any,
    data: TokenizedSet,
    pad_id: int,
    enabled: bool,
    max_length: int,
    to_device: Callable[[Batch], Batch],
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    low_precision: bool = False,
    device: torch.device = torch.device("cpu"),
    verdicts: dict[Any, str | None] | None = None,
) -> Batching:
    """Packed rows when the model allows it, else padding; batches carry their targets.

    `model` is the prepared (possibly wrapped) model, `unwrapped` the transformers model
    whose attention is switched. With packing on, the padded loss of the data's first rows
    is compared with the packed loss of each candidate kernel (every process runs the same
    forwards, under the training's autocast); the first that agrees within the compute
    precision is kept. None agreeing turns packing off with a warning. `verdicts` keeps the
    outcome for the other runs of a grid on the same base (the kernel does not depend on
    the adapter's weights), so the check runs once per base, device and precision.
    """

    def padded(indices: Sequence[int], rows: TokenizedSet) -> Batch:
        return with_targets(collate(indices, rows, pad_id))

    if not enabled:
        return Batching(padded, "padded")
    reason = unsupported_reason(unwrapped, max_length)
    if reason is not None:
        log.warning("training on padded batches: packing is off for this model because %s", reason)
        return Batching(padded, "padded")
    memo_key = (str(device), low_precision, max_length)
    if verdicts is not None and memo_key in verdicts:
        chosen = verdicts[memo_key]
        previous = enable(unwrapped) if chosen is not None else ""
    else:
        previous, chosen = _check_kernels(
            model, unwrapped, data, padded, to_device, autocast, low_precision, device
        )
        if verdicts is not None:
            verdicts[memo_key] = chosen

    def restore() -> None:
        unwrapped.set_attn_implementation(previous)

    if chosen is None:
        return Batching(padded, "padded")

    def packed_batch(indices: Sequence[int], rows: TokenizedSet) -> Batch:
        return with_targets(pack(indices, rows, chosen))

    return Batching(packed_batch, f"packed/{chosen}", restore)


def _check_kernels(
    model: Any,
    unwrapped: Any,
    data: TokenizedSet,
    padded: Batcher,
    to_device: Callable[[Batch], Batch],
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    low_precision: bool,
    device: torch.device,
) -> tuple[str, str | None]:
    """The implementation to restore, and the first kernel whose packed loss agrees with
    the padded one (None: none does; the model's own attention is back, with a warning)."""
    sample = list(range(min(2, len(data))))
    was_training = model.training
    model.eval()
    tried = []
    chosen = None
    with torch.no_grad(), autocast():
        reference = float(loss_sum(model, to_device(padded(sample, data)))[0])
        previous = enable(unwrapped)
        for kernel in kernel_candidates(device, low_precision):
            try:
                batch = to_device(with_targets(pack(sample, data, kernel)))
                packed = float(loss_sum(model, batch)[0])
                wrong = f"packed loss {packed:.6g} against padded {reference:.6g}"
                if agree(packed, reference, low_precision):
                    from .kernel_grads import kernel_gradients_wrong  # the backward too

                    wrong = kernel_gradients_wrong(kernel, unwrapped.config, device)
            except Exception as exc:  # a kernel this device or dtype does not run
                tried.append(f"{kernel}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                continue
            if wrong is None:
                chosen = kernel
                break
            tried.append(f"{kernel}: {wrong}")
    model.train(was_training)
    if chosen is None:
        unwrapped.set_attn_implementation(previous)
        log.warning(
            "training on padded batches: packing is off for this model because its packed "
            "loss differs from the padded one (%s)",
            "; ".join(tried),
        )
    elif tried:
        log.info("packed attention: %s; skipped %s", chosen, "; ".join(tried))
    return previous, chosen
