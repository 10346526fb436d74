"""Checkpoint resolution, shard indexes, .bin files, fingerprints and corrupt files."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from svdlora_cli.errors import CheckpointError, ModelMismatchError, ModelNotFoundError
from svdlora_cli.models import checkpoints
from svdlora_cli.models.checkpoints import TensorReader, fingerprint, open_checkpoint, open_pair
from svdlora_cli.models.refs import resolve_model_path


def test_sharded_checkpoint_streams_every_tensor(sharded_pair):
    ckpt = open_checkpoint(sharded_pair.base)
    assert len(ckpt.files) > 1 and (sharded_pair.base / checkpoints.SAFETENSORS_INDEX).exists()
    full = {}
    for f in ckpt.files:
        full.update(load_file(f))
    with TensorReader(ckpt) as reader:
        for name in ckpt.names():
            assert torch.equal(reader.get(name), full[name])
    assert set(ckpt.names()) == set(full)


def test_bin_checkpoint_reads_with_weights_only(tmp_path, llama_pair):
    folder = tmp_path / "bin"
    folder.mkdir()
    state = load_file(llama_pair.base / "model.safetensors")
    torch.save(state, folder / "pytorch_model.bin")
    ckpt = open_checkpoint(folder)
    assert ckpt.format == "bin"
    with TensorReader(ckpt) as reader:
        name = "model.layers.0.self_attn.q_proj.weight"
        assert torch.equal(reader.get(name), state[name])


def test_hub_id_resolves_from_local_hf_cache(tmp_path, monkeypatch, llama_pair):
    hub = tmp_path / "hub"
    snapshot = hub / "models--acme--tiny" / "snapshots" / "abc123"
    shutil.copytree(llama_pair.base, snapshot)
    (hub / "models--acme--tiny" / "refs").mkdir(parents=True)
    (hub / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    assert resolve_model_path("acme/tiny") == snapshot
    with pytest.raises(ModelNotFoundError, match="acme/other"):
        resolve_model_path("acme/other")


def test_missing_and_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="model not found"):
        open_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no weights"):
        open_checkpoint(tmp_path / "empty")


def test_truncated_safetensors_is_detected(tmp_path, llama_pair):
    folder = tmp_path / "cut"
    shutil.copytree(llama_pair.base, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        open_checkpoint(folder)
    weights.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="header"):
        open_checkpoint(folder)


def test_fingerprint_is_memoised_and_content_based(tmp_path, llama_pair, monkeypatch):
    memo: dict[str, str] = {}
    calls = []
    real = checkpoints._file_digest
    monkeypatch.setattr(checkpoints, "_file_digest", lambda f: calls.append(f) or real(f))
    ckpt = open_checkpoint(llama_pair.base)
    first = fingerprint(ckpt, memo)
    assert fingerprint(ckpt, memo) == first and len(calls) == 1
    copy = tmp_path / "copy"
    shutil.copytree(llama_pair.base, copy)
    assert fingerprint(open_checkpoint(copy), memo) == first  # same content, other path
    assert fingerprint(open_checkpoint(llama_pair.tuned), memo) != first


def test_pair_of_different_architectures_is_refused(llama_pair, gpt2_pair):
    with pytest.raises(ModelMismatchError):
        open_pair(llama_pair.base, gpt2_pair.tuned, with_fingerprints=False)


def test_shards_hashed_side_by_side_give_the_same_fingerprints(sharded_pair, monkeypatch):
    """A sharded pair's files hashed by a pool of threads: the memo holds each file's own
    sha256 (an independent hashlib call), and the fingerprints equal one-at-a-time ones."""
    import hashlib

    monkeypatch.setattr(checkpoints, "HASH_THREADS", 4)
    memo: dict[str, str] = {}
    pooled = open_pair(sharded_pair.base, sharded_pair.tuned, memo).fingerprints()
    files = [*open_checkpoint(sharded_pair.base).files, *open_checkpoint(sharded_pair.tuned).files]
    assert len(files) > 2
    assert sorted(memo.values()) == sorted(
        hashlib.sha256(f.read_bytes()).hexdigest() for f in files
    )
    monkeypatch.setattr(checkpoints, "HASH_THREADS", 1)
    assert open_pair(sharded_pair.base, sharded_pair.tuned, {}).fingerprints() == pooled


def test_open_pair_hashes_in_the_background_to_the_same_fingerprints(llama_pair):
    """open_pair returns before hashing unknown files; the digests equal the synchronous
    ones, reach the memo on the caller's thread, and the memo spares a second hashing."""
    import hashlib
    import threading

    memo: dict[str, str] = {}
    release = threading.Event()
    real = checkpoints._file_digest
    hashed_on: list[str] = []

    def slow(file):
        release.wait(10)  # open_pair must not wait for this
        hashed_on.append(threading.current_thread().name)
        return real(file)

    checkpoints._file_digest = slow
    try:
        pair = open_pair(llama_pair.base, llama_pair.tuned, memo)
        assert not memo and not hashed_on  # nothing hashed yet: open_pair did not wait
        release.set()
        got = pair.fingerprints()
    finally:
        checkpoints._file_digest = real
    assert got == {
        "base": fingerprint(open_checkpoint(llama_pair.base)),
        "tuned": fingerprint(open_checkpoint(llama_pair.tuned)),
    }
    assert threading.main_thread().name not in hashed_on and len(memo) == len(hashed_on)
    file = open_checkpoint(llama_pair.base).files[0]
    assert hashlib.sha256(file.read_bytes()).hexdigest() in memo.values()
    again = open_pair(llama_pair.base, llama_pair.tuned, memo)
    assert again.pending is not None and again.pending._thread is None  # all known: no thread
    assert again.fingerprints() == got


def test_a_file_that_cannot_be_hashed_fails_where_the_fingerprint_is_read(
    tmp_path, llama_pair, monkeypatch
):
    """The thread's error (a weight file deleted before it was read) is raised where the
    fingerprint is read, as a user error naming the file, and no digest reaches the memo."""
    import threading

    base = tmp_path / "base"
    shutil.copytree(resolve_model_path(llama_pair.base), base)
    release = threading.Event()
    real = checkpoints._file_digest
    monkeypatch.setattr(checkpoints, "_file_digest", lambda f: release.wait(10) and real(f))
    memo: dict[str, str] = {}
    pair = open_pair(base, llama_pair.tuned, memo)
    for file in base.glob("*.safetensors"):
        file.unlink()
    release.set()
    with pytest.raises(CheckpointError, match=r"cannot read .*model\.safetensors to fingerprint"):
        pair.fingerprints()
    assert not memo
