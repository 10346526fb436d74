"""The structural and per-module delta checks of a PEFT LoRA adapter (see verify.py).

The adapter's config and tensor header are read through the checked reader first
(adapters.read_adapter_layout) and must agree with each other (rank, target_modules).
PEFT then injects the config into the model transformers builds from the base (no
weights read): the modules it wraps must be exactly the adapter's, each with the right
in/out features (PEFT itself would only warn, drop weights or leave modules at their
init), and PEFT's delta of each module must be the rank-r delta the adapter was made from
(compared through r x r Gram products, never as dense matrices, but for one witness module
per layer class that pins PEFT's own `get_delta_weight`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, SvdloraError
from .factors import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterLayout,
    read_adapter_layout,
)
from .factors import name_examples as _examples
from .low_rank import LazyDeltas, file_deltas, low_rank_gap

TOLERANCE = 1e-4
_KEY_WARNING = re.compile(r"(missing|unexpected)[\w ]*keys?", re.I)
_LORA_KEY = re.compile(r"\.lora_[AB](\.\w+)?\.weight$")


class AdapterCheckError(SvdloraError):
    """An adapter would be (partly) dropped by PEFT, or does not reproduce its own delta."""


@contextmanager
def peft_warnings(hint: str) -> Iterator[list[str]]:
    """PEFT's warnings inside the block, each shown (never filtered away): one about missing
    or unexpected keys (weights PEFT would drop, or modules left at their init) is an error
    with `hint`; the others are collected, once each, into the yielded list for the
    document's warnings. Other packages' warnings go where they would have gone."""
    notes: list[str] = []
    problems: list[str] = []
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def hook(message: Any, category: Any, filename: str, lineno: int, *rest: Any) -> None:
            text = str(message).strip()
            if _KEY_WARNING.search(text):
                problems.append(text)
            elif "peft" in Path(filename).parts:
                line = f"PEFT: {text.splitlines()[0]}" if text else ""
                if line and line not in notes:
                    notes.append(line)
            else:
                shown(message, category, filename, lineno, *rest)

        warnings.showwarning = hook
        warnings.filterwarnings("always", module=r"peft(\.|$)")
        yield notes
    if problems:
        text = problems[0]
        found = _KEY_WARNING.search(text)
        keys = re.findall(r"'([^']+)'", text)
        modules = sorted({_LORA_KEY.sub("", k.removeprefix("base_model.model.")) for k in keys})
        raise AdapterCheckError(
            f"PEFT finds {found.group(0).lower() if found else 'key problems'} when loading "
            "the adapter"
            + (f", for {len(modules)} module(s): {_examples(modules)}" if modules else "")
            + ("" if modules else f": {text.splitlines()[0]}"),
            hint,
        )


def _same_model(ref: str, folder: Path) -> bool:
    from ..models.refs import resolve_model_path

    try:
        return resolve_model_path(ref).resolve() == Path(folder).resolve()
    except (SvdloraError, OSError):
        return False


def made_for_hint(layout: AdapterLayout, base_folder: str | Path) -> str:
    """What to do when the adapter does not fit the base: pass the base it was made for,
    or (when that is the base given) regenerate it."""
    recorded = layout.base_model
    if recorded and _same_model(recorded, Path(base_folder)):
        return (
            "this is the base the adapter names (base_model_name_or_path), so its module "
            "names, target_modules or shapes are off: regenerate it with this version of "
            "`svdlora svd`"
        )
    if recorded:
        return (
            f"pass the base model the adapter was made for: {recorded} "
            f"(base_model_name_or_path in its {ADAPTER_CONFIG})"
        )
    return (
        "pass the base model the adapter was made for "
        f"(its {ADAPTER_CONFIG} records none in base_model_name_or_path)"
    )


def _targeted(targets: str | list[str], module: str) -> bool:
    """PEFT's target_modules test: a regex over the full name, or a name/suffix in a list."""
    if isinstance(targets, str):
        try:
            return targets == "all-linear" or re.fullmatch(targets, module) is not None
        except re.error:  # not a regex this check can read: PEFT's own matching decides
            return True
    return any(module == t or module.endswith(f".{t}") for t in targets)


def config_check(layout: AdapterLayout) -> None:
    """The config claims what the tensors hold: each module's rank (r / rank_pattern)
    is its factors' rank, and target_modules selects every module that has tensors."""
    path = layout.folder / ADAPTER_CONFIG
    wrong = [
        f"{m} (config {layout.rank(m)}, tensors {a[0]})"
        for m, (a, _) in layout.shapes.items()
        if a[0] != layout.rank(m)
    ]
    if wrong:
        raise AdapterCheckError(
            f"{path} gives r = {layout.config['r']}, but the rank of the tensors differs in "
            f"{len(wrong)} of {len(layout.shapes)} modules: {_examples(wrong)}",
            "the config and the weights do not belong together; fix r / rank_pattern in "
            "the config or regenerate the adapter with `svdlora svd`",
        )
    targets = layout.config.get("target_modules")
    if targets is None:
        return
    untargeted = [m for m in layout.shapes if not _targeted(targets, m)]
    if untargeted:
        raise AdapterCheckError(
            f"{path}: target_modules {targets!r} leaves out {len(untargeted)} of the "
            f"{len(layout.shapes)} modules the adapter holds tensors for: {_examples(untargeted)}",
            "PEFT would drop their weights; add them to target_modules or regenerate the "
            "adapter with `svdlora svd`",
        )


def _layers(modules: Sequence[str]) -> set[int]:
    """Indices of the decoder blocks named in `modules` (layers.N / h.N / blocks.N)."""
    found = (re.search(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.", m) for m in modules)
    return {int(match.group(1)) for match in found if match}


def _coverage(adapter: Sequence[str], base: Sequence[str]) -> str:
    """'; the adapter covers 2 layers, the base has 4' when the counts differ."""
    mine, theirs = _layers(adapter), _layers(base)
    if mine and theirs and len(mine) != len(theirs):
        return f"; the adapter covers {len(mine)} layers, the base has {len(theirs)}"
    return ""


def structural_check(
    adapter: str | Path,
    base_folder: str | Path,
    expected: LazyDeltas | None = None,
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """The modules PEFT's LoRA wraps in the built model are exactly the adapter's, each
    with its shapes, and PEFT's own delta of each (its loader, scale and orientation) is
    the expected one.

    The model is built without weights (uninitialized host memory that is never read, so
    it costs no resident memory); PEFT loads the adapter's tensors into it. Each module's
    delta as PEFT holds it (its scaling times its lora_B @ lora_A) is compared with
    `expected` (e.g. the SVD's U_r S_r Vh_r), else with scale * B @ A as this package reads
    the file, through r x r Gram products (`low_rank_gap`: relative Frobenius gap); the
    smallest module of each layer class is also compared densely with PEFT's own
    `get_delta_weight`, which pins PEFT's formula for the rest.
    """
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    from ..models.module_map import meta_model

    folder = Path(adapter)
    layout = read_adapter_layout(folder)
    config_check(layout)
    shapes = layout.shapes
    wrong_base = made_for_hint(layout, base_folder)
    try:
        with peft_warnings(wrong_base) as notes:
            config = LoraConfig.from_pretrained(str(folder))
    except SvdloraError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"cannot read {folder / ADAPTER_CONFIG} as a LoRA config: {exc}",
            "pass a PEFT LoRA adapter folder",
        ) from exc
    model = meta_model(base_folder).to_empty(device="cpu")
    try:
        with peft_warnings(wrong_base) as more:
            inject_adapter_in_model(config, model)
    except SvdloraError:
        raise
    except Exception as exc:  # no target module matched, or a layer PEFT cannot wrap
        raise AdapterCheckError(
            f"PEFT wraps none of the adapter's modules in {base_folder}: "
            f"{str(exc).splitlines()[0]}",
            wrong_base,
        ) from exc
    wrapped = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    dropped = sorted(m for m in shapes if m not in wrapped)
    if dropped:
        raise AdapterCheckError(
            f"PEFT would drop {len(dropped)} of the adapter's {len(shapes)} modules: they are "
            f"no LoRA-wrapped module of the model built from {base_folder} "
            f"({_examples(dropped)}){_coverage(list(shapes), list(wrapped))}",
            wrong_base,
        )
    missing = sorted(m for m in wrapped if m not in shapes)
    if missing:
        raise AdapterCheckError(
            f"the adapter holds no weights for {len(missing)} of the {len(wrapped)} modules its "
            f"target_modules select in {base_folder} ({_examples(missing)})"
            f"{_coverage(list(shapes), list(wrapped))}",
            wrong_base,
        )
    targets = layout.config.get("target_modules")
    listed = targets if isinstance(targets, list) else []
    unused = [t for t in listed if not any(_targeted([t], m) for m in wrapped)]
    if unused:
        notes.append(
            f"target_modules names {_examples(unused)}, which matches no module of "
            f"{base_folder}; PEFT ignores it"
        )
    mismatched = []
    for module, (a, b) in shapes.items():
        layer = wrapped[module]
        if a[1] != layer.in_features or b[0] != layer.out_features:
            mismatched.append(f"{module} A{list(a)} B{list(b)}")
    if mismatched:
        raise AdapterCheckError(
            f"{len(mismatched)} adapter module(s) do not fit their layer in {base_folder} "
            f"(lora_A is (r, in_features), lora_B (out_features, r)): {_examples(mismatched)}",
            wrong_base,
        )
    if expected is None:
        expected = file_deltas(folder)
    deltas = _delta_check(folder, model, wrapped, sorted(shapes), expected, config, tolerance)
    return {
        "ok": True,
        "modules": len(shapes),
        "wrapped": len(wrapped),
        "extra_wrapped": len(set(wrapped) - set(shapes)),
        "deltas": deltas,
        "warnings": notes + [n for n in more if n not in notes] + deltas.pop("warnings", []),
    }


def _dense_witnesses(wrapped: Mapping[str, Any], modules: Sequence[str]) -> list[str]:
    """The smallest module of each LoRA layer class: its delta is also checked densely through
    PEFT's own `get_delta_weight`, which proves that this PEFT version's delta of that class
    is scale * B @ A in PEFT's orientation, the reading the Gram check of every module uses."""
    smallest: dict[type, str] = {}
    for module in sorted(modules, key=lambda m: _size(wrapped[m])):
        smallest.setdefault(type(wrapped[module]), module)
    return sorted(smallest.values())


def _size(layer: Any) -> int:
    return int(layer.out_features * layer.in_features)


def _dense_agrees(layer: Any, expected: torch.Tensor, fan_in_fan_out: bool, tol: float) -> bool:
    """PEFT's dense delta of one layer against the expected one, elementwise."""
    with torch.no_grad():
        theirs = layer.get_delta_weight("default").float()
    theirs = theirs.T if fan_in_fan_out else theirs
    mine = expected.float()
    if theirs.shape != mine.shape:
        return False
    scale = float(mine.abs().max()) if mine.numel() else 0.0
    gap = float((theirs - mine).abs().max()) / max(scale, 1e-30)
    return gap <= tol and (scale > 0) == bool(theirs.abs().max() > 0)


def _delta_check(
    folder: Path,
    model: Any,
    wrapped: Mapping[str, Any],
    modules: Sequence[str],
    expected: LazyDeltas,
    config: Any,
    tolerance: float,
    hint: str = "regenerate the adapter with `svdlora svd`",
) -> dict[str, Any]:
    """PEFT loads the adapter file into `model`; each module's PEFT delta against `expected`."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    for layer in wrapped.values():  # PEFT keeps adapter weights in fp32 (autocast_adapter_dtype)
        for part in (layer.lora_A, layer.lora_B):
            part.to(torch.float32)
    try:
        state = load_file(str(folder / ADAPTER_WEIGHTS))
    except Exception as exc:  # the header was checked; the data may still be unreadable
        raise CheckpointError(
            f"cannot read the weights in {folder / ADAPTER_WEIGHTS}: {str(exc).splitlines()[0]}",
            "the adapter file is truncated or corrupt: copy it again or regenerate it",
        ) from exc
    try:
        with peft_warnings(hint) as notes:
            result = set_peft_model_state_dict(model, state)
    except RuntimeError as exc:  # size mismatches: strict=False still raises on them
        raise AdapterCheckError(
            f"PEFT cannot load the adapter's tensors: {str(exc).splitlines()[-1].strip()}", hint
        ) from exc
    ignored = sorted(k for k in result.unexpected_keys if "lora_" in k)
    unloaded = sorted(k for k in result.missing_keys if "lora_" in k and ".default" in k)
    if ignored or unloaded:
        what = ignored or unloaded
        raise AdapterCheckError(
            f"PEFT {'ignores' if ignored else 'finds no tensor for'} {len(what)} of the "
            f"adapter's LoRA weights when loading it ({_examples(what)})",
            hint,
        )
    missing = sorted(set(modules) - set(expected))
    present = [m for m in modules if m not in missing]
    bad = [
        m
        for m in _dense_witnesses(wrapped, present)
        if not _dense_agrees(wrapped[m], expected[m], config.fan_in_fan_out, tolerance)
    ]
    worst = 0.0
    for module in present:
        layer = wrapped[module]
        theirs = (
            layer.scaling["default"] * layer.lora_B["default"].weight,
            layer.lora_A["default"].weight,
        )
        mine = expected.low_rank(module)
        if (theirs[0].shape[0], theirs[1].shape[1]) != (mine[0].shape[0], mine[1].shape[1]):
            bad.append(module)
            continue
        gap, theirs_norm, mine_norm = low_rank_gap(*theirs, *mine)
        relative = gap / max(mine_norm, 1e-30)
        worst = max(worst, relative)
        if relative > tolerance or (mine_norm > 0) != (theirs_norm > 0):
            bad.append(module)
    bad = sorted(set(bad))
    if bad or missing:
        what = f"{len(bad)} module(s) differ: {_examples(bad)}" if bad else ""
        if missing:
            what += ("; " if what else "") + f"no expected delta for {_examples(missing)}"
        raise AdapterCheckError(
            f"PEFT's delta of the loaded adapter is not its rank-r delta: {what}",
            f"the adapter's scale, orientation or split does not match its factors (relative "
            f"tolerance {tolerance:g}); regenerate it with `svdlora svd`",
        )
    return {
        "checked": len(modules),
        "max_rel_diff": worst,
        "norm": "frobenius",
        "tolerance": tolerance,
        "warnings": notes,
    }
