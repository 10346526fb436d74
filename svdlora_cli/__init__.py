"""svdlora: is full fine-tuning's dW low rank, and does an SVD-initialised LoRA learn faster?

The core library (everything outside `cli/`) never prints or exits; it returns
records and raises `SvdloraError` subclasses.
"""

import importlib
from typing import Any

# Public name -> defining module. Imported on first use so that `svdlora --help`
# and `import svdlora_cli` stay fast (torch is only loaded when needed).
_EXPORTS = {
    "LowRankFactors": "adapters.factors",
    "load_factors": "adapters.factors",
    "save_factors": "adapters.factors",
    "split_factors": "adapters.factors",
    "write_peft_adapter": "adapters.factors",
    "write_delta_outputs": "artifacts",
    "write_svd_outputs": "artifacts",
    "ArtifactCache": "store.cache",
    "default_cache_dir": "store.cache",
    "Checkpoint": "models.checkpoints",
    "ModelPair": "models.checkpoints",
    "open_checkpoint": "models.checkpoints",
    "open_pair": "models.checkpoints",
    "Decomposition": "spectra.decompose",
    "decompose": "spectra.decompose",
    "spectrum_stats": "spectra.decompose",
    "DeltaResult": "spectra.delta",
    "run_delta": "spectra.delta",
    "split_across_processes": "distributed",
    "NonFiniteOutputError": "errors",
    "OutputWriteError": "errors",
    "StepLogError": "errors",
    "SvdloraError": "errors",
    "ModuleSpectrum": "spectra.svd_step",
    "SvdResult": "spectra.svd_step",
    "run_svd": "spectra.svd_step",
    "Target": "spectra.targets",
    "select_targets": "spectra.targets",
    "build_module_map": "models.module_map",
    "verify_adapter": "adapters.verify",
    "InitMethod": "training.init_registry",
    "register_init": "training.init_registry",
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
    "InitMethod",
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
    "register_init",
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
