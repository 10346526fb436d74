"""The mechanics every LoRA init shares: the plan (modules, ranks, alpha) every arm of an
experiment uses, the factors' fit to the base, PEFT's LoraConfig, the plan check, and the
svd-factor path that writes (B, A) from the teacher's factors.

Which inits exist, and what each needs and does, is the registry's (init_registry.py).
The inits that rewrite the base move s * B0 @ A0 out of the base weight, so the model
starts at the base; their saved adapters are converted to plain LoRAs on the untouched
base (rank 2r) by PEFT's path_initial_model_for_weight_conversion.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..adapters.factors import LowRankFactors, target_module_names
from ..errors import InvalidOptionError, ModelMismatchError
from ..models.checkpoints import Checkpoint
from ..models.targets import CONV1D_MODEL_TYPES, describe, select_targets


@dataclass(frozen=True)
class LoraPlan:
    """Which modules get a LoRA and at which rank; identical across the arms of an experiment."""

    ranks: dict[str, int]
    rank: int
    alpha: float
    candidates: tuple[str, ...]
    fan_in_fan_out: bool

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def plan_lora(
    base: Checkpoint,
    rank: int,
    alpha: float | None,
    target_modules: Sequence[str] = (),
    factors: Mapping[str, LowRankFactors] | None = None,
) -> LoraPlan:
    """Targets from the factors (SVD inits) or the default/regex selection; ranks clamped."""
    if rank <= 0:
        raise InvalidOptionError(f"--rank must be positive, got {rank}", "use e.g. --rank 16")
    if alpha is not None and alpha <= 0:
        raise InvalidOptionError(
            f"--lora-alpha must be positive, got {alpha}", "omit it to use alpha = rank"
        )
    shapes = {n: t.shape for n, t in base.tensors.items()}
    if factors is not None:
        modules = check_factors_fit(base, factors)
    else:
        targets, _ = select_targets(shapes, base.model_type, include=target_modules)
        modules = {t.module: t.shape for t in targets}
    candidates = tuple(n.removesuffix(".weight") for n, s in shapes.items() if len(s) == 2)
    return LoraPlan(
        ranks={m: min(rank, *shape) for m, shape in modules.items()},
        rank=rank,
        alpha=float(alpha if alpha is not None else rank),
        candidates=candidates,
        fan_in_fan_out=base.model_type in CONV1D_MODEL_TYPES,
    )


def _listed(names: Sequence[str]) -> str:
    """`a, b, c` or `a, b, c and 4 more`: the first few of a list of module names."""
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more


def _kind(module: str) -> str:
    """A module's name with its layer (and expert) indices blanked: `model.layers.#.mlp.up_proj`."""
    return re.sub(r"(?<=\.)\d+(?=\.)", "#", module)


def check_factors_fit(
    base: Checkpoint,
    factors: Mapping[str, LowRankFactors],
    source: str = "",
    complete: bool = False,
) -> dict[str, tuple[int, int]]:
    """The (out, in) shape of each factored module; a ModelMismatchError when the factors
    name modules the base lacks, have other shapes, or (with `complete`) lack modules of
    the base of a kind they cover (a base of other depth). Only weights may differ."""
    shapes = {n: t.shape for n, t in base.tensors.items()}
    of = f" in {source}" if source else ""
    remedy = f"compute the factors from this base model (svdlora svd --base-model {base.ref} ...)"
    unknown = [m for m in factors if len(shapes.get(f"{m}.weight", ())) != 2]
    if unknown:
        raise ModelMismatchError(
            f"the SVD factors{of} name {len(unknown)} module(s) the base model {base.ref} "
            f"does not have: {_listed(unknown)}",
            remedy,
        )
    modules: dict[str, tuple[int, int]] = {}
    misfits = []
    for module, f in factors.items():
        target = describe(f"{module}.weight", shapes[f"{module}.weight"], base.model_type)
        modules[module] = target.shape
        if (f.B.shape[0], f.A.shape[1]) != target.shape:
            misfits.append(
                f"SVD factors for {module} are {f.B.shape[0]}x{f.A.shape[1]}, "
                f"the base weight is {target.shape[0]}x{target.shape[1]}"
            )
    if misfits:
        more = f" ({len(misfits) - 1} more module(s) differ)" if len(misfits) > 1 else ""
        raise ModelMismatchError(f"{misfits[0]}{more}", f"{remedy}; shapes must match")
    if complete:
        kinds = {_kind(m) for m in factors}
        weights = [n.removesuffix(".weight") for n in shapes if n.endswith(".weight")]
        missing = [
            m
            for m in weights
            if len(shapes[f"{m}.weight"]) == 2 and m not in factors and _kind(m) in kinds
        ]
        if missing:
            raise ModelMismatchError(
                f"the SVD factors{of} lack {len(missing)} module(s) that the base model "
                f"{base.ref} has (another depth?): {_listed(sorted(missing))}",
                f"{remedy}; the factors must cover every layer of the base",
            )
    return modules


def clamp_warnings(plan: LoraPlan) -> list[str]:
    """`svd`'s warning when --rank exceeds min(out, in) of some modules (their rank is cut)."""
    from ..spectra.truncation import clamp_warning

    clamped = [m for m, r in plan.ranks.items() if r < plan.rank]
    return [clamp_warning(plan.rank, clamped)] if clamped else []


def lora_config(
    plan: LoraPlan, init_lora_weights: bool | str = True, dropout: float = 0.0, **extra: Any
) -> Any:
    """PEFT LoraConfig for an arm: clamped ranks in rank_pattern, the same scale everywhere;
    `extra` holds an init's own fields (e.g. lora_ga_config). See `InitMethod.lora_config`."""
    from peft import LoraConfig

    pattern = {re.escape(m): r for m, r in plan.ranks.items() if r != plan.rank}
    return LoraConfig(
        r=plan.rank,
        lora_alpha=plan.alpha,
        target_modules=target_module_names(list(plan.ranks), plan.candidates),
        rank_pattern=pattern,
        alpha_pattern={k: plan.scale * r for k, r in pattern.items()},
        lora_dropout=dropout,
        bias="none",
        fan_in_fan_out=plan.fan_in_fan_out,
        init_lora_weights=init_lora_weights,
        task_type="CAUSAL_LM",
        **extra,
    )


def check_plan(peft_model: Any, plan: LoraPlan, adapter: str = "default") -> None:
    """Every arm has a LoRA on exactly the plan's modules, at the plan's rank and scale."""
    layers = {
        name.removeprefix("base_model.model."): module
        for name, module in peft_model.named_modules()
        if hasattr(module, "lora_A") and adapter in getattr(module, "r", {})
    }
    found = {m: (layer.r[adapter], layer.scaling[adapter]) for m, layer in layers.items()}
    wanted = {m: (r, plan.scale) for m, r in plan.ranks.items()}
    if set(found) != set(wanted) or any(
        found[m][0] != wanted[m][0] or abs(found[m][1] - wanted[m][1]) > 1e-9 for m in wanted
    ):
        bad = sorted(set(found) ^ set(wanted)) or [m for m in wanted if found[m] != wanted[m]]
        raise ModelMismatchError(
            f"the LoRA layers differ from the plan at {', '.join(bad[:3])}",
            "every arm must share modules, ranks and alpha; report this init as a bug",
        )


def factor_weights(
    f: LowRankFactors, rule: Callable[..., tuple[Any, Any]], rank: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) of an SVD-family init: its `rule` on B0 = U S, A0 = Vh and S, truncated to `rank`."""
    if f.rank < rank:
        raise InvalidOptionError(
            f"the SVD factors hold rank {f.rank}, fewer than the LoRA rank {rank}",
            "recompute them with `svdlora svd --rank R` for R >= --rank",
        )
    return rule(f.B[:, :rank].float(), f.A[:rank].float(), f.S[:rank].float(), scale)


@torch.no_grad()
def apply_factor_init(
    peft_model: Any,
    plan: LoraPlan,
    rule: Callable[..., tuple[Any, Any]],
    factors: Mapping[str, LowRankFactors],
    adapter: str = "default",
) -> None:
    """Overwrite each LoRA layer's A and B with an SVD-family init's (B, A) by `rule`."""
    for module, rank in plan.ranks.items():
        layer = peft_model.base_model.model.get_submodule(module)
        B, A = factor_weights(factors[module], rule, rank, plan.scale)
        lora_A, lora_B = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        if lora_A.shape != A.shape or lora_B.shape != B.shape:
            raise ModelMismatchError(
                f"LoRA layer {module} has A {tuple(lora_A.shape)}, B {tuple(lora_B.shape)}; "
                f"the init gives {tuple(A.shape)}, {tuple(B.shape)}",
                "check --rank and the factors' source model",
            )
        lora_A.copy_(A.to(lora_A.dtype))
        lora_B.copy_(B.to(lora_B.dtype))
