"""Low-rank factors <-> files: the factors file and PEFT LoRA adapter folders.

PEFT computes W' = W + (alpha / r) * B @ A with A (r, in) and B (out, r). With
dW ~ U_r S_r Vh_r, split `b` takes B = U_r S_r and A = Vh_r; split `sqrt` puts
sqrt(S_r) on both. Either way alpha = r, so the scale is 1 and B @ A is the
best rank-r approximation of dW (Eckart-Young-Mirsky).
"""

from __future__ import annotations

import json
import re
import struct
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as save_safetensors

from ..errors import CheckpointError, InvalidOptionError
from ..files import atomic_path, write_json

if TYPE_CHECKING:
    import torch

    Matrix = torch.Tensor | np.ndarray

SPLITS = ("b", "sqrt")
FACTORS_LAYOUT = "B = U_r diag(S_r) (out, r); A = Vh_r (r, in); W' = W + B @ A"


@dataclass(frozen=True)
class LowRankFactors:
    """One module's LoRA factors in PEFT's orientation, with its singular values: torch
    tensors, or numpy arrays on the warm `svd` path (which imports no torch)."""

    B: Matrix
    A: Matrix
    S: Matrix

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


def split_factors(U: Matrix, S: Matrix, Vh: Matrix, split: str = "b") -> LowRankFactors:
    """LoRA factors from a truncated SVD, with Sigma on B (`b`) or shared as sqrt (`sqrt`).

    The arithmetic runs in numpy for torch tensors too (which come back as tensors): its
    float32 products and sqrt are correctly rounded, whereas torch's vectorised sqrt can be
    an ulp off, so the full path and the torch-free warm path get the same bits.
    """
    if split not in SPLITS:
        raise InvalidOptionError(f"unknown --split {split!r}", f"use one of: {', '.join(SPLITS)}")
    u, s, vh = as_array(U), as_array(S), as_array(Vh)
    root = s if split == "b" else np.sqrt(s)
    B, A = u * root, (vh.copy() if split == "b" else root[:, None] * vh)
    if not hasattr(U, "detach"):
        return LowRankFactors(B=B, A=A, S=s.copy())
    import torch

    B, A, S = (torch.from_numpy(x).to(U.device) for x in (B, A, s.copy()))
    return LowRankFactors(B=B, A=A, S=S)


def as_array(x: Matrix) -> np.ndarray:
    """A C-contiguous numpy array of a tensor (on the CPU) or an array: what writers write."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().contiguous().numpy()
    return np.ascontiguousarray(x)


def _finite(x: Matrix) -> bool:
    return bool(x.isfinite().all()) if hasattr(x, "isfinite") else bool(np.isfinite(x).all())


def require_finite(tensors: Mapping[str, Matrix], what: str, hint: str) -> None:
    """Refuse to write NaN or Inf: name the first bad tensor and how many there are."""
    from ..errors import NonFiniteOutputError

    bad = [name for name, t in tensors.items() if not _finite(t)]
    if bad:
        raise NonFiniteOutputError(
            f"{what} hold NaN or Inf in {len(bad)} tensor(s), e.g. {bad[0]}; nothing was written",
            hint,
        )


def safetensors_bytes(tensors: Mapping[str, Matrix], metadata: Mapping[str, str]) -> bytes:
    """A safetensors file whose bytes depend only on its content (tensors or arrays).

    safetensors writes the metadata in hash-map order, which changes from process to
    process; the header is rewritten with sorted keys (offsets are unaffected). Every
    writer here goes through numpy (`as_array`), so the warm `svd` path (numpy only) and
    the full one write the same bytes by construction.
    """
    require_finite(tensors, "the factors", "check the models for NaN/Inf weights")
    arrays = {k: as_array(v) for k, v in tensors.items()}
    data = save_safetensors(arrays, metadata=dict(metadata))
    size = struct.unpack("<Q", data[:8])[0]
    header = json.dumps(
        json.loads(data[8 : 8 + size]), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data[8 + size :]


def save_factors(
    path: Path, factors: Mapping[str, LowRankFactors], metadata: Mapping[str, str]
) -> Path:
    """`{module}.B`, `{module}.A` and `{module}.S` in one safetensors file, written atomically."""
    tensors = {}
    for module, f in factors.items():
        tensors[f"{module}.B"] = f.B
        tensors[f"{module}.A"] = f.A
        tensors[f"{module}.S"] = f.S
    meta = {"format": "pt", "layout": FACTORS_LAYOUT, **{k: str(v) for k, v in metadata.items()}}
    data = safetensors_bytes(tensors, meta)
    with atomic_path(path, size=len(data)) as tmp:
        tmp.write_bytes(data)
    return path


def load_factors(path: str | Path) -> dict[str, LowRankFactors]:
    """Read a factors file written by `save_factors` (as torch tensors)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            tensors = {k: handle.get_tensor(k) for k in keys}
    except Exception as exc:
        raise CheckpointError(
            f"cannot read factors file {path}: {exc}",
            "pass a svd_factors_rank*.safetensors file written by `svdlora svd`",
        ) from exc
    modules = sorted({k.rsplit(".", 1)[0] for k in keys})
    out = {}
    for module in modules:
        try:
            out[module] = LowRankFactors(
                B=tensors[f"{module}.B"], A=tensors[f"{module}.A"], S=tensors[f"{module}.S"]
            )
        except KeyError as exc:
            raise CheckpointError(
                f"factors file {path} lacks {exc.args[0]}", "regenerate it with `svdlora svd`"
            ) from exc
    return out


def target_module_names(targets: Sequence[str], candidates: Sequence[str]) -> list[str]:
    """Leaf names (q_proj, ...) when they select exactly the targets, else full module names."""
    leaves = {m.rsplit(".", 1)[-1] for m in targets}
    chosen = set(targets)
    covered = [c for c in candidates if c.rsplit(".", 1)[-1] in leaves]
    if set(covered) == chosen:
        return sorted(leaves)
    return sorted(chosen)


def adapter_config(
    ranks: Mapping[str, int],
    target_modules: Sequence[str],
    base_model: str,
    fan_in_fan_out: bool,
) -> dict:
    """PEFT's LoraConfig as JSON, alpha = r per module; differing ranks go to rank_pattern.

    Written directly rather than through `peft.LoraConfig` (importing peft costs
    seconds); PEFT fills every field left out with its default when loading.
    """
    default_rank = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {re.escape(m): r for m, r in ranks.items() if r != default_rank}
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": default_rank,
        "lora_alpha": default_rank,
        "target_modules": sorted(target_modules),
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "inference_mode": True,
    }


def write_peft_adapter(
    folder: Path,
    factors: Mapping[str, LowRankFactors],
    candidates: Sequence[str],
    base_model: str,
    fan_in_fan_out: bool = False,
) -> Path:
    """A folder `PeftModel.from_pretrained(base, folder)` loads as a LoRA starting at B @ A."""
    ranks = {m: f.rank for m, f in factors.items()}
    config = adapter_config(
        ranks, target_module_names(list(factors), candidates), base_model, fan_in_fan_out
    )
    tensors = {}
    for module, f in factors.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = f.A
        tensors[f"base_model.model.{module}.lora_B.weight"] = f.B
    require_finite(tensors, "the adapter weights", "check the models for NaN/Inf weights")
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {k: as_array(v) for k, v in tensors.items()}
    data = save_safetensors(arrays, metadata={"format": "pt"})
    with atomic_path(folder / "adapter_model.safetensors", size=len(data)) as tmp:
        tmp.write_bytes(data)
    write_json(folder / "adapter_config.json", config)
    return folder


@dataclass(frozen=True)
class AdapterWeights:
    """One module of a saved PEFT LoRA: its delta is scale * B @ A (out, in)."""

    B: torch.Tensor
    A: torch.Tensor
    scale: float

    def delta(self) -> torch.Tensor:
        return self.scale * (self.B.float() @ self.A.float())


def _pattern_value(patterns: Mapping[str, float], module: str, default: float) -> float:
    """PEFT's rank_pattern / alpha_pattern lookup: the key matches a suffix of the module name."""
    for key, value in patterns.items():
        try:
            hit = re.match(rf"(.*\.)?({key})$", module) is not None
        except re.error:  # not a regex: a name or a suffix of one
            hit = module == key or module.endswith(f".{key}")
        if hit:
            return value
    return default


def name_examples(names: Sequence[str], limit: int = 3) -> str:
    """The first few names, and how many more there are."""
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_REGENERATE = "regenerate the adapter with `svdlora svd` (or save it again with PEFT)"


@dataclass(frozen=True)
class AdapterLayout:
    """What a PEFT LoRA adapter folder claims (its config) and holds (tensor shapes, read
    from the file header): no weights are read."""

    folder: Path
    config: dict[str, Any]
    keys: dict[str, tuple[str, str]]  # module -> (lora_A key, lora_B key)
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # module -> (A, B) shapes

    @property
    def base_model(self) -> str | None:
        """The base the adapter records (base_model_name_or_path), if any."""
        return self.config.get("base_model_name_or_path") or None

    def rank(self, module: str) -> int:
        """The rank the config gives `module` (r, or its rank_pattern entry)."""
        patterns = self.config.get("rank_pattern") or {}
        return int(_pattern_value(patterns, module, self.config["r"]))

    def scale(self, module: str) -> float:
        """PEFT's scale of `module`: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        rank = self.rank(module)
        alphas = self.config.get("alpha_pattern") or {}
        alpha = float(_pattern_value(alphas, module, self.config["lora_alpha"]))
        return alpha / (rank**0.5 if self.config.get("use_rslora") else rank)


def _number(value: Any, integer: bool) -> bool:
    kinds = (int,) if integer else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool) and value > 0


def _read_adapter_config(folder: Path) -> dict[str, Any]:
    """adapter_config.json, checked for the fields a LoRA reader needs."""
    path = folder / ADAPTER_CONFIG
    hint = f"fix {path} or {_REGENERATE}"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(
            f"{folder} has no {ADAPTER_CONFIG}", "pass a PEFT LoRA adapter folder"
        ) from exc
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} as JSON: {exc}", hint) from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a JSON object", hint)
    kind = config.get("peft_type", "LORA")
    if str(kind).upper() != "LORA":
        raise CheckpointError(f"{path} describes a {kind} adapter, not LoRA", "pass a LoRA adapter")
    config.setdefault("r", 8)  # PEFT's LoraConfig defaults
    config.setdefault("lora_alpha", 8)
    for field, integer in (("r", True), ("lora_alpha", False)):
        if not _number(config[field], integer):
            kind = "a positive integer" if integer else "a positive number"
            raise CheckpointError(f"{path}: {field} must be {kind}, got {config[field]!r}", hint)
    for field in ("rank_pattern", "alpha_pattern"):
        patterns = config.get(field) or {}
        if not isinstance(patterns, dict) or not all(
            _number(v, field == "rank_pattern") for v in patterns.values()
        ):
            raise CheckpointError(f"{path}: {field} must map names to positive numbers", hint)
    targets = config.get("target_modules")
    if not (targets is None or isinstance(targets, (str, list))):
        raise CheckpointError(f"{path}: target_modules must be a list or a string", hint)
    return config


def read_adapter_layout(folder: str | Path) -> AdapterLayout:
    """The checked reader of a PEFT LoRA adapter folder: its config, and the shapes of its
    lora_A (r, in) / lora_B (out, r) pairs from the safetensors header. A truncated or
    corrupt file, half a pair or factors that disagree on r are errors naming the file."""
    from ..models.formats import format_for

    folder = Path(folder)
    config = _read_adapter_config(folder)
    file = folder / ADAPTER_WEIGHTS
    if not file.is_file():
        raise CheckpointError(
            f"{folder} has no {ADAPTER_WEIGHTS}",
            "pass a folder with adapter_config.json and adapter_model.safetensors",
        )
    try:
        infos = format_for(file).header(file)
    except CheckpointError as exc:
        raise CheckpointError(
            exc.message, f"the adapter file is truncated or corrupt: copy it again or {_REGENERATE}"
        ) from exc
    parts: dict[str, dict[str, str]] = {}
    for key in infos:
        for part in ("A", "B"):
            if key.endswith(f".lora_{part}.weight"):
                module = key.removesuffix(f".lora_{part}.weight").removeprefix("base_model.model.")
                parts.setdefault(module, {})[part] = key
    if not parts:
        raise CheckpointError(
            f"{file} holds no LoRA weights (no *.lora_A.weight / *.lora_B.weight tensors)",
            "pass a LoRA adapter folder",
        )
    half = sorted(m for m, p in parts.items() if len(p) < 2)
    if half:
        raise CheckpointError(
            f"{file} holds only one of lora_A / lora_B for {len(half)} module(s): "
            f"{name_examples(half)}",
            f"the file is incomplete: {_REGENERATE}",
        )
    keys = {m: (p["A"], p["B"]) for m, p in sorted(parts.items())}
    shapes = {m: (infos[a].shape, infos[b].shape) for m, (a, b) in keys.items()}
    odd = [
        f"{m} A{list(a)} B{list(b)}"
        for m, (a, b) in shapes.items()
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]
    ]
    if odd:
        raise CheckpointError(
            f"{file}: lora_A (r, in) and lora_B (out, r) disagree in {len(odd)} module(s): "
            f"{name_examples(odd)}",
            f"the file is not a LoRA adapter this tool can read: {_REGENERATE}",
        )
    return AdapterLayout(folder, config, keys, shapes)


def read_peft_adapter(folder: str | Path) -> dict[str, AdapterWeights]:
    """The LoRA factors and scale of every module in a PEFT adapter folder (default adapter)."""
    layout = read_adapter_layout(folder)
    file = layout.folder / ADAPTER_WEIGHTS
    try:
        with safe_open(str(file), framework="pt") as handle:
            return {
                module: AdapterWeights(
                    B=handle.get_tensor(b), A=handle.get_tensor(a), scale=layout.scale(module)
                )
                for module, (a, b) in layout.keys.items()
            }
    except Exception as exc:  # safetensors raises its own error type
        raise CheckpointError(
            f"cannot read the weights in {file}: {str(exc).splitlines()[0]}",
            f"the adapter file is truncated or corrupt: copy it again or {_REGENERATE}",
        ) from exc
