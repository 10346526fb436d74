"""svdlora: is full fine-tuning's dW low rank, and does an SVD-initialised LoRA learn faster?

The core library (everything outside `cli/`) never prints or exits; it returns
records and raises `SvdloraError` subclasses.
"""

import importlib
from typing import Any

# Public name -> defining module. Imported on first use so that `svdlora --help`
# and `import svdlora_cli` stay fast (torch is only loaded when needed).
_EXPORTS = {
    "LowRankFactors": "adapters",
    "load_factors": "adapters",
    "save_factors": "adapters",
    "split_factors": "adapters",
    "write_peft_adapter": "adapters",
    "write_delta_outputs": "artifacts",
    "write_svd_outputs": "artifacts",
    "ArtifactCache": "cache",
    "default_cache_dir": "cache",
    "Checkpoint": "checkpoints",
    "ModelPair": "checkpoints",
    "open_checkpoint": "checkpoints",
    "open_pair": "checkpoints",
    "Decomposition": "decompose",
    "decompose": "decompose",
    "spectrum_stats": "decompose",
    "DeltaResult": "delta",
    "run_delta": "delta",
    "split_across_processes": "distributed",
    "NonFiniteOutputError": "errors",
    "OutputWriteError": "errors",
    "StepLogError": "errors",
    "SvdloraError": "errors",
    "ModuleSpectrum": "extraction",
    "SvdResult": "extraction",
    "run_svd": "extraction",
    "Target": "targets",
    "select_targets": "targets",
    "build_module_map": "module_map",
    "verify_adapter": "verify",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "ArtifactCache",
    "Checkpoint",
    "Decomposition",
    "DeltaResult",
    "LowRankFactors",
    "ModelPair",
    "ModuleSpectrum",
    "NonFiniteOutputError",
    "OutputWriteError",
    "StepLogError",
    "SvdResult",
    "SvdloraError",
    "Target",
    "__version__",
    "build_module_map",
    "decompose",
    "default_cache_dir",
    "load_factors",
    "open_checkpoint",
    "open_pair",
    "run_delta",
    "run_svd",
    "save_factors",
    "select_targets",
    "spectrum_stats",
    "split_across_processes",
    "split_factors",
    "verify_adapter",
    "write_delta_outputs",
    "write_peft_adapter",
    "write_svd_outputs",
]
