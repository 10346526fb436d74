"""Prove a PEFT LoRA adapter does what its factors say: structure, logits and (with a
teacher) how much of the base-to-teacher gap it closes.

1. Structural and per-module deltas (checks.py, no weights read): PEFT injects
   the adapter's config into the model transformers builds; every adapter key must land
   on a wrapped module of the right shape, and PEFT's delta of each module (loaded by
   PEFT) must be the rank-r delta the adapter was made from.
2. Probe: logits of base + adapter through PEFT against the base with W + scale * B @ A
   added to its weights directly (fp32), on a few token ids. They must agree to a
   relative tolerance, and the adapter must change the logits.
3. Gap (with a teacher): mean per-token KL(teacher || base + adapter) on eval rows,
   against KL(teacher || base); the closed share is 1 - KL_adapted / KL_base.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import SvdloraError
from .checks import (
    TOLERANCE,
    AdapterCheckError,
    _examples,
    made_for_hint,
    peft_warnings,
    structural_check,
)
from .low_rank import LazyDeltas, file_deltas

PROBE_TOKENS = 8
# `svd`'s logits probe is on by default below this size: it loads the base in fp32 (4 bytes
# a parameter, so about 1 GB here). PEFT's per-module delta check runs at every size.
VERIFY_MAX_PARAMETERS = 250_000_000


def _logits(model: Any, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits.float()


def probe_ids(vocab_size: int, tokens: int = PROBE_TOKENS, seed: int = 0) -> torch.Tensor:
    """A fixed batch of token ids inside the vocabulary."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (1, tokens), generator=gen)


def _module_mismatches(
    peft_model: Any, deltas: Mapping[str, torch.Tensor], tol: float, fan_in_fan_out: bool
) -> list[str]:
    """Modules whose PEFT delta weight (out, in) differs from the directly computed one."""
    inner = peft_model.get_base_model()
    bad = []
    for module in deltas:
        delta = deltas[module].float()
        layer = inner.get_submodule(module)
        if not hasattr(layer, "get_delta_weight"):
            bad.append(module)
            continue
        with torch.no_grad():
            theirs = layer.get_delta_weight("default").float()
        theirs = theirs.T if fan_in_fan_out else theirs
        scale = float(delta.abs().max()) or 1.0
        if theirs.shape != delta.shape or float((theirs - delta).abs().max()) > tol * scale:
            bad.append(module)
    return bad


def load_adapted(
    base_ref: str, adapter: str | Path, hint: str = "pass the base model the adapter was made for"
) -> tuple[Any, list[str]]:
    """(PEFT model of base + adapter in fp32 on the CPU, PEFT's warnings while loading it).

    A warning about missing or unexpected keys is an error with `hint`, never a pass.
    """
    from peft import PeftModel

    from ..models.loading import load_model

    model = load_model(base_ref).eval()
    try:
        with peft_warnings(hint) as notes:
            peft_model = PeftModel.from_pretrained(model, str(adapter)).eval()
    except SvdloraError:
        raise
    except Exception as exc:
        raise AdapterCheckError(
            f"PEFT cannot load the adapter {adapter} onto {base_ref}: {str(exc).splitlines()[0]}",
            hint,
        ) from exc
    return peft_model, notes


def probe_check(
    peft_model: Any,
    adapter: str | Path,
    tolerance: float = TOLERANCE,
    expected: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """PEFT logits vs the base with each module's delta (out, in) added to its weight (fp32).

    The deltas are `expected` (e.g. the SVD's U_r S_r Vh_r), else scale * B @ A read from
    the adapter file. Merges into the wrapped model's base weights: the model is spent.
    """
    config = peft_model.peft_config["default"]
    if expected is None:
        expected = file_deltas(adapter)
    vocab = int(peft_model.get_base_model().config.get_text_config().vocab_size)
    ids = probe_ids(vocab)
    adapted = _logits(peft_model, ids)
    with peft_model.disable_adapter():
        base = _logits(peft_model, ids)
    inner = peft_model.get_base_model()
    nonzero = False
    with torch.no_grad():
        for module in expected:  # one module's dense delta at a time (they may be lazy)
            delta = expected[module].float()
            nonzero = nonzero or float(delta.abs().max()) > 0
            layer = getattr(inner.get_submodule(module), "base_layer", None)
            if layer is None:  # not wrapped: the structural check names these
                raise AdapterCheckError(
                    f"PEFT did not wrap {module}", "regenerate the adapter with `svdlora svd`"
                )
            conv1d = type(layer).__name__ == "Conv1D"  # GPT-2 stores (in, out)
            layer.weight += delta.T if conv1d else delta
            del delta
        with peft_model.disable_adapter():
            merged = _logits(peft_model, ids)
    scale = max(float(merged.abs().max()), 1e-12)
    diff = float((adapted - merged).abs().max())
    change = float((adapted - base).abs().max())
    expected_change = float((merged - base).abs().max())
    probe = {
        "tokens": int(ids.shape[1]),
        "max_abs_diff": diff,
        "rel_diff": diff / scale,
        "tolerance": tolerance,
        "max_abs_change": change,
        "expected_change": expected_change,
        "changed": change > 0.0,
        "ok": diff <= tolerance * scale and (change > 0.0 or not nonzero),
    }
    if diff > tolerance * scale:
        bad = _module_mismatches(peft_model, expected, tolerance, config.fan_in_fan_out)
        raise AdapterCheckError(
            f"base + adapter through PEFT differs from the directly merged rank-r delta: "
            f"max |logit diff| {diff:.3g} ({diff / scale:.3g} relative, tolerance {tolerance:g})"
            + (f"; modules: {_examples(bad)}" if bad else ""),
            "the adapter's scale or orientation does not match its factors; "
            "regenerate it with `svdlora svd`",
        )
    if nonzero and change == 0.0:
        raise AdapterCheckError(
            f"the adapter's B @ A is non-zero in {len(expected)} modules but base + adapter "
            "gives the base's logits exactly",
            "PEFT is not applying the adapter; regenerate it with `svdlora svd`",
        )
    return probe


def _kl_terms(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Per-position KL(teacher || student) in nats."""
    t = torch.log_softmax(teacher, dim=-1)
    s = torch.log_softmax(student, dim=-1)
    return (t.exp() * (t - s)).sum(-1)


def gap_check(
    peft_model: Any,
    teacher_ref: str,
    base_ref: str,
    eval_data: str | None = None,
    max_rows: int = 32,
    max_length: int = 256,
    batch_size: int = 8,
) -> dict[str, Any]:
    """KL(teacher || base) and KL(teacher || base + adapter) on answer tokens of eval rows."""
    from ..data import (
        check_token_ids,
        collate,
        load_examples,
        resolve_data_path,
        tokenize_examples,
    )
    from ..models.loading import load_model, load_tokenizer

    path = resolve_data_path(eval_data, "eval")
    examples = load_examples(path)[:max_rows]
    tokenizer = load_tokenizer(base_ref)
    data = tokenize_examples(examples, tokenizer, max_length)
    teacher = load_model(teacher_ref).eval()
    check_token_ids(teacher, tokenizer, data)
    kl_base = kl_adapted = 0.0
    count = 0
    for start in range(0, len(data), batch_size):
        batch = collate(
            range(start, min(start + batch_size, len(data))), data, tokenizer.pad_token_id
        )
        ids, mask = batch["input_ids"], batch["attention_mask"]
        # logits at position i predict token i + 1: score the positions before answer tokens
        keep = batch["labels"][:, 1:] != -100
        t = _logits(teacher, ids, mask)[:, :-1][keep]
        a = _logits(peft_model, ids, mask)[:, :-1][keep]
        with peft_model.disable_adapter():
            b = _logits(peft_model, ids, mask)[:, :-1][keep]
        kl_base += float(_kl_terms(t, b).sum())
        kl_adapted += float(_kl_terms(t, a).sum())
        count += int(keep.sum())
    del teacher
    kl_b, kl_a = kl_base / max(count, 1), kl_adapted / max(count, 1)
    return {
        "eval_data": str(path),
        "rows": len(data),
        "tokens": count,
        "kl_teacher_base": kl_b,
        "kl_teacher_adapted": kl_a,
        "gap_closed": 1.0 - kl_a / kl_b if kl_b > 0 else None,
    }


def parameter_count(folder: str | Path) -> int:
    """Parameters of a checkpoint, counted from its safetensors headers (no weights read)."""
    from ..models.checkpoints import open_checkpoint

    checkpoint = open_checkpoint(folder)
    return sum(math.prod(info.shape) for info in checkpoint.tensors.values())


def adapter_base(adapter: str | Path) -> str | None:
    """The base model an adapter names in its config (base_model_name_or_path)."""
    try:
        config = json.loads((Path(adapter) / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    return (config.get("base_model_name_or_path") or None) if isinstance(config, dict) else None


def verify_adapter(
    adapter: str | Path,
    base_ref: str,
    probe: bool = True,
    teacher_ref: str | None = None,
    eval_data: str | None = None,
    max_rows: int = 32,
    tolerance: float = TOLERANCE,
    expected: LazyDeltas | None = None,
) -> dict[str, Any]:
    """Checked read and structural check, then (optionally) the gap to a teacher and the
    logits probe. `warnings` holds what PEFT warned about that is not an error."""
    from ..models.refs import resolve_model_path
    from .factors import read_adapter_layout

    layout = read_adapter_layout(adapter)  # config and header, checked, before any model
    base_folder = resolve_model_path(base_ref)
    if expected is None:  # read the file once for both checks
        expected = file_deltas(adapter)
    structural = structural_check(adapter, base_folder, expected, tolerance)
    notes = structural.pop("warnings", [])
    out: dict[str, Any] = {"structural": structural, "warnings": notes}
    if not probe and teacher_ref is None:
        out["probe"] = None
        return out
    hint = made_for_hint(layout, base_folder)
    peft_model, loading = load_adapted(str(base_folder), adapter, hint)
    notes += [n for n in loading if n not in notes]
    if teacher_ref is not None:
        out["gap"] = gap_check(peft_model, teacher_ref, str(base_folder), eval_data, max_rows)
    out["probe"] = probe_check(peft_model, adapter, tolerance, expected) if probe else None
    return out
