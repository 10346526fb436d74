"""What the runs of one `train` call share in a process: the base model, its tokenizer,
and the step-0 rows of identical starts.

A grid (learning rates x seeds x inits) used to load, build and evaluate the base once per
run, which is most of a short run. `SharedSetup` loads the base once, hands it to each run
with bit-identical weights (`take`), and gets it back after the run (`give_back`): PEFT's
layers are unloaded, and the inits that rewrite base weights (pissa, olora, lora-ga,
corda) have those weights restored from a copy taken before them. Only a single process
shares: under DDP/FSDP the launcher wraps (FSDP: shards) the model in place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class SharedSetup:
    """One process's base model, tokenizer and step-0 rows for every run of a grid."""

    model_ref: str
    trust_remote_code: bool = False
    starts: dict[Any, Any] = field(default_factory=dict)
    loads: int = 0
    # The starting state of costly inits, on the host, by the arm's start key: LoRA weights
    # and rewritten base weights. Seedless ones (pissa's SVD of every target weight) are
    # kept for the whole grid; data-driven ones (LoRA-GA, LoRA-One, EVA, CorDA: a pass over
    # the seed's init rows) for the learning rates of one seed, which the grid runs in a row.
    inits: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    _seeded: dict[str, int] = field(default_factory=dict)  # start key -> seed
    _tokenizer: Any = None
    _model: Any = None
    _dtype: torch.dtype | None = None
    _saved: dict[str, torch.Tensor] = field(default_factory=dict)

    def tokenizer(self) -> Any:
        from ..models.loading import load_tokenizer

        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model_ref, self.trust_remote_code)
        return self._tokenizer

    def take(self, dtype: torch.dtype, rewritten: Iterable[str] = ()) -> Any:
        """The base model in `dtype`, exactly as on disk; `rewritten` names the modules
        whose weights the coming init will change (copied now, restored by `give_back`)."""
        from ..models.loading import load_model

        if self._model is None or self._dtype != dtype:
            self._model = None  # release the old copy before loading the new one
            self._model = load_model(self.model_ref, self.trust_remote_code, dtype)
            self._dtype = dtype
            self.loads += 1
        model = self._model
        self._saved = {  # on the host: a GPU need not hold two copies of the targets
            f"{module}.{name}": tensor.detach().to("cpu", copy=True)
            for module in rewritten
            for name, tensor in model.get_submodule(module).named_parameters(recurse=False)
        }
        return model

    def give_back(self, trained: Any) -> None:
        """Take the base back from a trained PEFT model: LoRA layers out, weights restored."""
        base = trained.unload() if hasattr(trained, "unload") else trained
        if hasattr(base, "peft_config"):
            del base.peft_config
        with torch.no_grad():
            params = dict(base.named_parameters())
            for name, saved in self._saved.items():
                params[name].copy_(saved)
        self._saved = {}
        for p in base.parameters():
            p.requires_grad_(True)  # as loaded: PEFT froze them; the next run freezes again
        self._model = base

    def remember_init(
        self, key: str, model: Any, rewrites_base: bool = True, seed: int | None = None
    ) -> None:
        """Keep a PEFT model's starting LoRA weights under `key`, and its base-layer weights
        when the init rewrote them. A start of one `seed` replaces those of other seeds, so
        at most one seed's data-driven starts are held at a time."""
        for old in [k for k, s in self._seeded.items() if seed is not None and s != seed]:
            del self.inits[old], self._seeded[old]
        self.inits[key] = {
            name: p.detach().to("cpu", copy=True)
            for name, p in model.named_parameters()
            if "lora_" in name or (rewrites_base and ".base_layer." in name)
        }
        if seed is not None:
            self._seeded[key] = seed

    def restore_init(self, key: str, model: Any) -> None:
        """Give a freshly wrapped PEFT model the starting weights kept under `key`."""
        params = dict(model.named_parameters())
        state = self.inits[key]
        if state.keys() - params.keys():
            raise RuntimeError("a cached LoRA start does not fit the model it was made for")
        with torch.no_grad():
            for name, saved in state.items():
                params[name].copy_(saved)

    def forget(self) -> None:
        """Drop the model (a run failed half-way: its weights can no longer be trusted)."""
        self._model, self._dtype, self._saved = None, None, {}
