"""The structural and per-module delta checks of a PEFT LoRA adapter (see verify.py).

PEFT injects the adapter's config into the model transformers builds (no weights read)
and loads the adapter's tensors; every adapter key must land on a wrapped module of the
right shape (PEFT itself would only warn and drop it), and PEFT's delta of each module
must be the rank-r delta the adapter was made from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .adapters import read_peft_adapter
from .errors import CheckpointError, SvdloraError

TOLERANCE = 1e-4


class AdapterCheckError(SvdloraError):
    """An adapter would be (partly) dropped by PEFT, or does not reproduce its own delta."""


def _examples(names: Sequence[str], limit: int = 3) -> str:
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _adapter_shapes(folder: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """Module -> {"A": shape, "B": shape} from the adapter file's header."""
    from safetensors import safe_open

    try:
        with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as handle:
            keys = list(handle.keys())
            shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in keys}
    except Exception as exc:
        raise CheckpointError(
            f"cannot read the PEFT adapter in {folder}: {exc}",
            "pass a folder with adapter_config.json and adapter_model.safetensors",
        ) from exc
    out: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        for part in ("A", "B"):
            suffix = f".lora_{part}.weight"
            if key.endswith(suffix):
                module = key.removesuffix(suffix).removeprefix("base_model.model.")
                out.setdefault(module, {})[part] = shape
    return out


class LazyDeltas(Mapping[str, torch.Tensor]):
    """module -> its dense delta, formed from the module's factors when asked, so a
    model's deltas never exist all at once (a 0.5B model's would take 1.4 GB in fp32)."""

    def __init__(self, factors: Mapping[str, Any], form: Callable[[Any], torch.Tensor]) -> None:
        self._factors = factors
        self._form = form

    def __getitem__(self, module: str) -> torch.Tensor:
        return self._form(self._factors[module])

    def __iter__(self) -> Iterator[str]:
        return iter(self._factors)

    def __len__(self) -> int:
        return len(self._factors)


def file_deltas(adapter: str | Path) -> LazyDeltas:
    """Each module's scale * B @ A as this package reads the adapter file (formed lazily)."""
    return LazyDeltas(read_peft_adapter(adapter), lambda weights: weights.delta())


def structural_check(
    adapter: str | Path,
    base_folder: str | Path,
    expected: Mapping[str, torch.Tensor] | None = None,
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """Every adapter module is wrapped by PEFT's LoRA in the built model, with its shapes,
    and PEFT's own delta of each (its loader, scale and orientation) is the expected one.

    The model is built without weights (uninitialized host memory that is never read, so
    it costs no resident memory); PEFT loads the adapter's tensors into it and
    `get_delta_weight` gives each module's delta, compared with `expected` (e.g. the SVD's
    U_r S_r Vh_r), else with scale * B @ A as this package reads the file.
    """
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    from .module_map import meta_model

    folder = Path(adapter)
    shapes = _adapter_shapes(folder)
    if not shapes:
        raise CheckpointError(f"{folder} holds no LoRA weights", "pass a LoRA adapter folder")
    try:
        config = LoraConfig.from_pretrained(str(folder))
    except Exception as exc:
        raise CheckpointError(
            f"cannot read {folder}/adapter_config.json as a LoRA config: {exc}",
            "pass a PEFT LoRA adapter folder",
        ) from exc
    model = meta_model(base_folder).to_empty(device="cpu")
    hint = (
        "the adapter's module names must be those of the model transformers builds; "
        "regenerate it with this version of `svdlora svd`"
    )
    try:
        inject_adapter_in_model(config, model)
    except Exception as exc:  # no target module matched, or a layer PEFT cannot wrap
        raise AdapterCheckError(
            f"PEFT wraps none of the adapter's modules in {base_folder}: "
            f"{str(exc).splitlines()[0]}",
            hint,
        ) from exc
    wrapped = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    dropped = sorted(m for m in shapes if m not in wrapped)
    if dropped:
        raise AdapterCheckError(
            f"PEFT would drop {len(dropped)} of the adapter's {len(shapes)} modules: they are "
            f"no LoRA-wrapped module of the built model ({_examples(dropped)})",
            hint,
        )
    mismatched = []
    for module, parts in shapes.items():
        layer = wrapped[module]
        a, b = parts.get("A"), parts.get("B")
        if a is None or b is None or a[1] != layer.in_features or b[0] != layer.out_features:
            mismatched.append(f"{module} A{list(a or [])} B{list(b or [])}")
    if mismatched:
        raise AdapterCheckError(
            f"{len(mismatched)} adapter module(s) do not fit their layer: {_examples(mismatched)}",
            hint,
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
    }


def _delta_check(
    folder: Path,
    model: Any,
    wrapped: Mapping[str, Any],
    modules: Sequence[str],
    expected: Mapping[str, torch.Tensor],
    config: Any,
    tolerance: float,
) -> dict[str, Any]:
    """PEFT loads the adapter file into `model`; each module's PEFT delta against `expected`."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    for layer in wrapped.values():  # PEFT keeps adapter weights in fp32 (autocast_adapter_dtype)
        for part in (layer.lora_A, layer.lora_B):
            part.to(torch.float32)
    state = load_file(str(folder / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, state)
    ignored = sorted(k for k in result.unexpected_keys if "lora_" in k)
    if ignored:
        raise AdapterCheckError(
            f"PEFT ignores {len(ignored)} of the adapter's tensors when loading it "
            f"({_examples(ignored)})",
            "regenerate the adapter with `svdlora svd`",
        )
    missing = sorted(set(modules) - set(expected))
    bad, worst = [], 0.0
    for module in modules:
        if module in missing:
            continue
        with torch.no_grad():
            theirs = wrapped[module].get_delta_weight("default").float()
        theirs = theirs.T if config.fan_in_fan_out else theirs
        mine = expected[module].float()
        scale = float(mine.abs().max()) if mine.numel() else 0.0
        if theirs.shape != mine.shape:
            bad.append(module)
            continue
        gap = float((theirs - mine).abs().max()) / max(scale, 1e-30)
        worst = max(worst, gap)
        if gap > tolerance or (scale > 0) != bool(theirs.abs().max() > 0):
            bad.append(module)
    if bad or missing:
        what = f"{len(bad)} module(s) differ: {_examples(bad)}" if bad else ""
        if missing:
            what += ("; " if what else "") + f"no expected delta for {_examples(missing)}"
        raise AdapterCheckError(
            f"PEFT's delta of the loaded adapter is not its rank-r delta: {what}",
            f"the adapter's scale, orientation or split does not match its factors (relative "
            f"tolerance {tolerance:g}); regenerate it with `svdlora svd`",
        )
    return {"checked": len(modules), "max_rel_diff": worst, "tolerance": tolerance}
