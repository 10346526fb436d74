"""Checkpoint tensor keys -> module names of the model transformers builds, and which of
those modules a PEFT LoRA wraps.

A checkpoint's keys need not be the built model's names: GPT-2 on the hub stores
`h.0.attn.c_attn.weight` for the module `transformer.h.0.attn.c_attn`, and
transformers 5 fuses per-expert MoE weights (`mlp.experts.3.up_proj.weight`) into
one 3-D parameter. The model is built on the meta device (no weights) and keys are
renamed with transformers' own loading rules (`rename_source_key`), so an adapter
names the modules that PEFT finds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .targets import Target

LINEAR_TYPES = ("Linear", "Conv1D")  # module classes PEFT's LoRA wraps for these targets


def meta_model(folder: str | Path) -> Any:
    """The causal LM transformers builds from `folder`'s config.json, on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # unknown model_type, malformed config, no causal-LM class
        raise CheckpointError(
            f"transformers cannot build a causal LM from {folder}/config.json: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            "pass a Hugging Face causal-LM folder whose config.json transformers knows",
        ) from exc


@dataclass
class ModuleMap:
    """Where each checkpoint tensor lands in the built model."""

    modules: dict[str, str]  # tensor key -> name of a LoRA-wrappable module (key minus .weight)
    fused: dict[str, str]  # tensor key -> the fused 3-D parameter it is loaded into
    absent: list[str]  # tensor keys that are no module of the built model
    candidates: list[str]  # every LoRA-wrappable module of the built model


def linear_modules(model: Any) -> list[str]:
    """Names of the modules whose class PEFT's LoRA wraps as a Linear (nn.Linear, Conv1D)."""
    return [n for n, m in model.named_modules() if type(m).__name__ in LINEAR_TYPES and n]


def build_module_map(folder: str | Path, keys: Sequence[str]) -> ModuleMap:
    """Rename checkpoint keys the way `from_pretrained` does and classify what they become."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    model = meta_model(folder)
    transforms = get_model_conversion_mapping(model, None, None)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    state = model.state_dict()
    candidates = linear_modules(model)
    wrappable = set(candidates)
    out = ModuleMap({}, {}, [], candidates)
    for key in keys:
        renamed, converted = rename_source_key(
            key, renamings, converters, model.base_model_prefix, state
        )
        module = renamed.removesuffix(".weight")
        if converted is None and renamed.endswith(".weight") and module in wrappable:
            out.modules[key] = module
        elif converted is not None or renamed in state:
            out.fused[key] = renamed
        else:
            out.absent.append(key)
    return out


@dataclass
class Coverage:
    """Targets renamed to the built model's modules, and those left out with the reason."""

    renamed: dict[str, str] = field(default_factory=dict)
    fused_experts: list[str] = field(default_factory=list)
    not_modules: list[str] = field(default_factory=list)
    checked: bool = True
    reason: str = ""

    def to_dict(self) -> dict:
        return {
            "checked": self.checked,
            "reason": self.reason,
            "renamed": len(self.renamed),
            "renamed_example": next(iter(self.renamed.items()), None),
            "fused_experts": self.fused_experts,
            "not_modules": self.not_modules,
        }

    def warnings(self) -> list[str]:
        out = []
        if not self.checked:
            out.append(f"module names were not checked against the built model: {self.reason}")
        if self.fused_experts:
            out.append(
                f"{len(self.fused_experts)} expert tensors not covered: fused 3-D parameters "
                f"in the model transformers builds (e.g. {self.fused_experts[0]}); they are "
                "left out of the adapter and its energy figures"
            )
        if self.not_modules:
            out.append(
                f"{len(self.not_modules)} target tensor(s) are no module of the model "
                f"transformers builds (e.g. {self.not_modules[0]}); left out of the adapter"
            )
        return out


def _map_key(folder: str | Path, keys: Sequence[str]) -> str | None:
    """The cache key of a module map: the config's bytes, the keys and the transformers
    version (None when config.json cannot be read; building the map then raises)."""
    import hashlib
    from importlib.metadata import version

    from ..store.cache import content_key

    try:
        config = hashlib.sha256((Path(folder) / "config.json").read_bytes()).hexdigest()
    except OSError:
        return None
    return content_key(
        "module-map", config=config, keys=list(keys), transformers=version("transformers")
    )


def module_map(folder: str | Path, keys: Sequence[str], cache: Any = None) -> ModuleMap:
    """`build_module_map`, remembered in the artifact cache by the config's bytes, the keys
    and the transformers version (building the model skeleton takes seconds)."""
    return PendingMap(folder, keys, cache, background=False).result()


class PendingMap:
    """A module map from the cache, or being built (on a background thread when asked:
    transformers' import and the meta model take seconds that an SVD job can use, as
    torch's kernels release the GIL). Only the creating thread touches the cache."""

    def __init__(
        self, folder: str | Path, keys: Sequence[str], cache: Any = None, background: bool = True
    ) -> None:
        from concurrent.futures import Future, ThreadPoolExecutor

        keys, self.cache = list(keys), cache
        enabled = cache is not None and getattr(cache, "enabled", False)
        self.key = _map_key(folder, keys) if enabled else None
        found = cache.get_json(self.key) if self.key is not None else None
        self.future: Future[ModuleMap] = Future()
        self.stored = isinstance(found, dict)
        if isinstance(found, dict):
            self.future.set_result(ModuleMap(**found))
        elif background:
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="svdlora-module-map")
            self.future = pool.submit(build_module_map, folder, keys)
            pool.shutdown(wait=False)  # its thread ends with the build
        else:
            try:
                self.future.set_result(build_module_map(folder, keys))
            except Exception as exc:  # raised by result(), as a build on a thread would
                self.future.set_exception(exc)

    def dropped(self, key: str) -> bool:
        """True once the map is known and leaves tensor `key` out of the adapter (an SVD
        job skips it); False while it is being built, or when it could not be built."""
        if not self.future.done() or self.future.exception() is not None:
            return False
        return key not in self.future.result().modules

    def result(self) -> ModuleMap:
        """The map (waiting for the build), stored in the cache on first use; raises the
        build's CheckpointError."""
        mapping = self.future.result()
        if self.key is not None and not self.stored:
            self.cache.put_json(self.key, dataclasses.asdict(mapping))
            self.stored = True
        return mapping


def map_targets(
    folder: str | Path,
    targets: Sequence[Target],
    rest: Sequence[str],
    cache: Any = None,
    pending: PendingMap | None = None,
) -> tuple[list[Target], list[str], list[str] | None, Coverage]:
    """Targets named after the built model's modules; uncovered ones move to `rest`.

    Returns (targets, rest, candidate module names or None when unchecked, coverage).
    With a `cache`, the module map of a config and key list is built once; `pending` is
    one already under way for these targets.
    Without a config transformers can build, names stay as in the file (unchecked).
    """
    try:
        keys = [t.tensor for t in targets]
        mapping = (pending or PendingMap(folder, keys, cache, background=False)).result()
    except CheckpointError as exc:
        return list(targets), list(rest), None, Coverage(checked=False, reason=exc.message)
    coverage = Coverage()
    kept: list[Target] = []
    dropped: list[str] = []
    for target in targets:
        module = mapping.modules.get(target.tensor)
        if module is None:
            dropped.append(target.tensor)
            bucket = (
                coverage.fused_experts if target.tensor in mapping.fused else coverage.not_modules
            )
            bucket.append(target.tensor)
            continue
        if module != target.module:
            coverage.renamed[target.module] = module
            target = dataclasses.replace(target, module=module)
        kept.append(target)
    if not kept:
        raise CheckpointError(
            f"none of the {len(targets)} selected tensors is a Linear module of the model "
            f"transformers builds from {folder} (e.g. {targets[0].tensor})",
            "select other tensors with --include/--exclude; fused 3-D expert weights "
            "cannot be exported as a LoRA",
        )
    return kept, [*rest, *dropped], mapping.candidates, coverage
