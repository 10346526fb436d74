"""Which weight files of a model folder to read: exactly those transformers would load.

transformers' `from_pretrained` on a folder looks, in order, for `model.safetensors`,
`model.safetensors.index.json`, `pytorch_model.bin` and `pytorch_model.bin.index.json`,
and reads nothing else. Any other weight file in the folder (an older export, a
renamed copy) is ignored with a warning, because reading it too would let a stale
tensor silently replace the real one. A folder with none of these names is read only
when it holds a single weight file; several are ambiguous and refused. svdlora's own
outputs (`svd_factors_*.safetensors`, PEFT adapter files) are never weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from .formats import WEIGHT_PATTERNS

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
_OWN_OUTPUTS = ("svd_factors_*.safetensors", "adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class WeightFiles:
    """The files to read and the weight-looking files left out (with why)."""

    files: tuple[Path, ...]
    ignored: tuple[Path, ...] = ()
    reason: str = ""

    def warning(self, folder: Path) -> str | None:
        """One line naming the ignored files, or None when there are none."""
        if not self.ignored:
            return None
        names = ", ".join(f.name for f in self.ignored)
        return (
            f"{folder}: ignored {len(self.ignored)} weight file(s) that transformers would not "
            f"load ({names}); read {self.reason}"
        )


def _candidates(folder: Path) -> list[Path]:
    """Every weight-looking file in the folder except svdlora's own outputs."""
    own = {f for pattern in _OWN_OUTPUTS for f in folder.glob(pattern)}
    found = [f for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern)]
    return sorted(f for f in found if f.is_file() and f not in own)


def _indexed(folder: Path, index_name: str) -> list[Path]:
    index = folder / index_name
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({folder / str(f) for f in weight_map.values()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index} is not a valid shard index", "re-save the model") from exc
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(
            f"{folder} is missing shard(s) listed in {index_name}: {', '.join(missing)}",
            "finish downloading or copying the checkpoint (transformers could not load it either)",
        )
    return files


def select_weight_files(folder: Path) -> WeightFiles:
    """The files transformers would read from `folder`; refuses an ambiguous folder."""
    candidates = _candidates(folder)
    for name, index in ((SAFETENSORS, False), (SAFETENSORS_INDEX, True), (BIN, False)):
        if (folder / name).is_file():
            files = _indexed(folder, name) if index else [folder / name]
            break
    else:
        if (folder / BIN_INDEX).is_file():
            files, name = _indexed(folder, BIN_INDEX), BIN_INDEX
        elif len(candidates) <= 1:
            return WeightFiles(tuple(candidates))
        else:
            listed = ", ".join(f.name for f in candidates[:6])
            more = f" and {len(candidates) - 6} more" if len(candidates) > 6 else ""
            raise CheckpointError(
                f"{folder} holds {len(candidates)} weight files ({listed}{more}) but neither "
                f"{SAFETENSORS} nor a shard index: which of them make up the model is ambiguous",
                f"keep the model's weights as {SAFETENSORS} (or shards with their "
                f"{SAFETENSORS_INDEX}) and move the other files out of the folder",
            )
    ignored = tuple(f for f in candidates if f not in set(files))
    return WeightFiles(tuple(files), ignored, name)
