"""Which tensors a LoRA can target, their module names, groups and orientation."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import InvalidOptionError

ATTENTION_LEAVES = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "c_attn", "query_key_value", "Wqkv"}
)
MLP_LEAVES = frozenset(
    {"gate_proj", "up_proj", "down_proj", "gate_up_proj", "c_fc", "fc1", "fc2", "w1", "w2", "w3"}
    | {"dense_h_to_4h", "dense_4h_to_h"}
)
# Leaves whose role depends on the parent module (GPT-2's attn.c_proj vs mlp.c_proj).
SHARED_LEAVES = frozenset({"c_proj", "dense", "out_proj"})
PROJECTION_LEAVES = ATTENTION_LEAVES | MLP_LEAVES | SHARED_LEAVES
# GPT-2 style Conv1D stores weights as (in, out); LoRA works on (out, in).
CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "imagegpt"})

_LAYER = re.compile(r"\.(\d+)\.")
_EMBEDDING = re.compile(r"(embed|wte|wpe|tok_embeddings|word_embeddings)")


@dataclass(frozen=True)
class Target:
    """A 2-D weight a LoRA adapts; `shape` is (out, in) whatever the storage order."""

    tensor: str
    module: str
    module_type: str
    group: str
    layer: int | None
    shape: tuple[int, int]
    transposed: bool


def _group(module: str, leaf: str) -> str:
    if leaf in ATTENTION_LEAVES:
        return "attention"
    if leaf in MLP_LEAVES:
        return "mlp"
    parent = module.rsplit(".", 2)[-2] if module.count(".") >= 1 else ""
    if "attn" in parent or "attention" in parent:
        return "attention"
    if any(k in parent for k in ("mlp", "ffn", "feed_forward")):
        return "mlp"
    return "other"


def describe(name: str, shape: Sequence[int], model_type: str) -> Target:
    """Module name, type, group, layer and (out, in) shape of a 2-D weight tensor."""
    module = name.removesuffix(".weight")
    leaf = module.rsplit(".", 1)[-1]
    group = _group(module, leaf)
    module_type = leaf
    if leaf in SHARED_LEAVES:
        parent = module.rsplit(".", 2)[-2] if "." in module else ""
        module_type = f"{parent}.{leaf}" if parent else leaf
    layer_match = _LAYER.search(name)
    transposed = model_type in CONV1D_MODEL_TYPES and leaf.startswith("c_")
    out_dim, in_dim = (shape[1], shape[0]) if transposed else (shape[0], shape[1])
    return Target(
        tensor=name,
        module=module,
        module_type=module_type,
        group=group,
        layer=int(layer_match.group(1)) if layer_match else None,
        shape=(int(out_dim), int(in_dim)),
        transposed=transposed,
    )


def is_default_target(name: str, shape: Sequence[int]) -> bool:
    """A 2-D projection weight inside a numbered transformer block."""
    if len(shape) != 2 or not name.endswith(".weight") or not _LAYER.search(name):
        return False
    leaf = name.removesuffix(".weight").rsplit(".", 1)[-1]
    return leaf in PROJECTION_LEAVES


def _compile(patterns: Sequence[str], flag: str) -> list[re.Pattern[str]]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise InvalidOptionError(
                f"{flag} {pattern!r} is not a valid regex: {exc}",
                "use a Python regex such as 'q_proj|v_proj' or 'layers\\.(0|1)\\.'",
            ) from exc
    return compiled


def untargeted_kind(name: str, shape: Sequence[int]) -> str:
    """Why LoRA does not take this tensor: embedding, lm_head, norm, bias, projection, other."""
    lower = name.lower()
    if lower.endswith(".bias"):
        return "bias"
    if _EMBEDDING.search(lower):
        return "embedding"
    if "lm_head" in lower:
        return "lm_head"
    if "norm" in lower or ".ln_" in lower or lower.startswith("ln_"):
        return "norm"
    if len(shape) == 2 and name.endswith(".weight"):
        return "projection (not selected)"
    return "other"


def select_targets(
    shapes: Mapping[str, Sequence[int]],
    model_type: str = "",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> tuple[list[Target], list[str]]:
    """Split tensor names into LoRA targets and the rest.

    With no `include`, targets are the default projections. An `include` regex
    (searched in the tensor name) replaces the default rule; `exclude` removes.
    """
    includes = _compile(include, "--include")
    excludes = _compile(exclude, "--exclude")
    targets: list[Target] = []
    rest: list[str] = []
    for name, shape in shapes.items():
        if includes:
            chosen = (
                len(shape) == 2
                and name.endswith(".weight")
                and any(p.search(name) for p in includes)
            )
            if chosen and _EMBEDDING.search(name.lower()):
                raise InvalidOptionError(
                    f"--include selects the embedding {name}, which svdlora cannot export as LoRA",
                    "narrow the regex to Linear projections (e.g. add --exclude embed)",
                )
        else:
            chosen = is_default_target(name, shape)
        if chosen and any(p.search(name) for p in excludes):
            chosen = False
        if chosen:
            targets.append(describe(name, shape, model_type))
        else:
            rest.append(name)
    if not targets:
        given = " ".join(
            [*(f"--include {p}" for p in include), *(f"--exclude {p}" for p in exclude)]
        )
        raise InvalidOptionError(
            f"no LoRA target tensors selected{' by ' + given if given else ''}",
            "check the tensor names (`svdlora delta --include .` lists every 2-D weight) "
            "and adjust --include/--exclude",
        )
    return targets, rest
