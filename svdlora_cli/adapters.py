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

import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors

from .errors import CheckpointError, InvalidOptionError
from .files import atomic_path, write_json

SPLITS = ("b", "sqrt")
FACTORS_LAYOUT = "B = U_r diag(S_r) (out, r); A = Vh_r (r, in); W' = W + B @ A"


@dataclass(frozen=True)
class LowRankFactors:
    """One module's LoRA factors in PEFT's orientation, with its singular values."""

    B: torch.Tensor
    A: torch.Tensor
    S: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


def split_factors(
    U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, split: str = "b"
) -> LowRankFactors:
    """LoRA factors from a truncated SVD, with Sigma on B (`b`) or shared as sqrt (`sqrt`)."""
    if split == "b":
        return LowRankFactors(B=U * S, A=Vh.clone(), S=S.clone())
    if split == "sqrt":
        root = S.sqrt()
        return LowRankFactors(B=U * root, A=root[:, None] * Vh, S=S.clone())
    raise InvalidOptionError(f"unknown --split {split!r}", f"use one of: {', '.join(SPLITS)}")


def require_finite(tensors: Mapping[str, torch.Tensor], what: str, hint: str) -> None:
    """Refuse to write NaN or Inf: name the first bad tensor and how many there are."""
    from .errors import NonFiniteOutputError

    bad = [name for name, t in tensors.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise NonFiniteOutputError(
            f"{what} hold NaN or Inf in {len(bad)} tensor(s), e.g. {bad[0]}; nothing was written",
            hint,
        )


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """A safetensors file whose bytes depend only on its content.

    safetensors writes the metadata in hash-map order, which changes from process to
    process; the header is rewritten with sorted keys (offsets are unaffected).
    """
    require_finite(tensors, "the factors", "check the models for NaN/Inf weights")
    data = save_safetensors(dict(tensors), metadata=dict(metadata))
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
        tensors[f"{module}.B"] = f.B.contiguous()
        tensors[f"{module}.A"] = f.A.contiguous()
        tensors[f"{module}.S"] = f.S.contiguous()
    meta = {"format": "pt", "layout": FACTORS_LAYOUT, **{k: str(v) for k, v in metadata.items()}}
    data = safetensors_bytes(tensors, meta)
    with atomic_path(path, size=len(data)) as tmp:
        tmp.write_bytes(data)
    return path


def load_factors(path: str | Path) -> dict[str, LowRankFactors]:
    """Read a factors file written by `save_factors`."""
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
        tensors[f"base_model.model.{module}.lora_A.weight"] = f.A.contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = f.B.contiguous()
    require_finite(tensors, "the adapter weights", "check the models for NaN/Inf weights")
    folder.mkdir(parents=True, exist_ok=True)
    data = save_safetensors(tensors, metadata={"format": "pt"})
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
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_peft_adapter(folder: str | Path) -> dict[str, AdapterWeights]:
    """The LoRA factors and scale of every module in a PEFT adapter folder (default adapter)."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
        weights_file = folder / "adapter_model.safetensors"
        with safe_open(str(weights_file), framework="pt") as handle:
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read the PEFT adapter in {folder}: {exc}",
            "pass a folder with adapter_config.json and adapter_model.safetensors",
        ) from exc
    r, alpha = float(config["r"]), float(config["lora_alpha"])
    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    out = {}
    for key in tensors:
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removesuffix(".lora_A.weight").removeprefix("base_model.model.")
        rank = _pattern_value(ranks, module, r)
        module_alpha = _pattern_value(alphas, module, alpha)
        scale = module_alpha / (rank**0.5 if config.get("use_rslora") else rank)
        out[module] = AdapterWeights(
            B=tensors[key.replace("lora_A", "lora_B")], A=tensors[key], scale=float(scale)
        )
    if not out:
        raise CheckpointError(f"{folder} holds no LoRA weights", "pass a LoRA adapter folder")
    return out
