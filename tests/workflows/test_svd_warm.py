"""The warm `svd` path: a repeat rebuilt from the run memo writes the full path's exact bytes,
imports no torch, transformers or peft, and gives way to the full path whenever anything it
relies on is missing, corrupt or different."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from svdlora_cli.store.cache import ArtifactCache
from svdlora_cli.workflows import svd_warm
from tests.conftest import assert_user_error, invoke, invoke_json

RANK = "4"


def _svd(pair, out: Path, *extra: object, warm: bool = True, monkeypatch=None) -> dict:
    base, tuned = pair
    if monkeypatch is not None:
        monkeypatch.setattr(svd_warm, "_ENABLED", warm)
    return invoke_json("svd", "-b", base, "-t", tuned, "-o", out, "--no-plot", *extra)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()
    }


def _warmed(pair, out: Path, monkeypatch, *extra: object) -> dict:
    """A cold full run, then a full repeat (it keeps the run memo); the repeat's document."""
    _svd(pair, out, *extra, warm=False, monkeypatch=monkeypatch)
    doc = _svd(pair, out, *extra, warm=False, monkeypatch=monkeypatch)
    monkeypatch.setattr(svd_warm, "_ENABLED", True)
    return doc


CASES = {
    "rank-b": ("qwen2", ("--rank", RANK)),
    "rank-sqrt": ("qwen2", ("--rank", RANK, "--split", "sqrt")),
    "energy": ("qwen2", ("--energy", "0.9")),
    "plot": ("qwen2", ("--rank", "2", "--plot")),  # the PNG is drawn from the same document
    "gpt2-conv1d": ("gpt2", ("--rank", RANK)),  # fan_in_fan_out adapters
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_warm_repeat_writes_the_full_repeats_bytes(
    case, pair, gpt2_pair, tmp_path, monkeypatch, full_runs
):
    """Full, full again (the memo), then warm into the same folder: every file and the
    printed document are identical, and the warm run decomposed nothing."""
    arch, extra = CASES[case]
    models = pair if arch == "qwen2" else (gpt2_pair.base, gpt2_pair.tuned)
    out = tmp_path / "out"
    full = _warmed(models, out, monkeypatch, *extra)
    expected = _files(out)
    assert len(full_runs) == 2 and full["cache"]["misses"] == 0
    warm = _svd(models, out, *extra)
    assert len(full_runs) == 2, "the warm path ran the decomposition step"
    assert warm == full and warm["verification"]["cached"] is True
    assert _files(out) == expected
    assert any(name.endswith(".png") for name in expected) == (case == "plot")


CHILD = """
import json, sys
from svdlora_cli.cli.app import main
sys.argv = ["svdlora", *json.loads(sys.argv[1])]
try:
    main()
finally:
    heavy = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
    print("HEAVY=" + json.dumps(heavy), file=sys.stderr)
"""


def _child(args: list[object]) -> tuple[str, list[str]]:
    """`svdlora ARGS` in a fresh python: its stdout and the ML packages it imported."""
    env = {**os.environ, "SVDLORA_NO_PROGRESS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([str(a) for a in args])],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(x for x in done.stderr.splitlines() if x.startswith("HEAVY="))
    return done.stdout, json.loads(line.removeprefix("HEAVY="))


def test_a_warm_repeat_imports_no_torch_transformers_or_peft(pair, tmp_path, monkeypatch):
    """Neither for the JSON document nor for the table, with the plot drawn."""
    out = tmp_path / "out"
    full = _warmed(pair, out, monkeypatch, "--rank", RANK, "--plot")
    base, tuned = pair
    args = ["svd", "-b", base, "-t", tuned, "-o", out, "--rank", RANK]
    stdout, heavy = _child([*args, "--json"])
    assert heavy == []
    doc = json.loads(stdout)
    assert doc["verification"] == full["verification"] and doc["modules"] == full["modules"]
    stdout, heavy = _child(args)
    assert heavy == [] and "dW spectra at rank 4" in stdout
    # the same child on a run the memo does not cover imports them (the check can fail)
    _, heavy = _child([*args[:-1], "3", "--json"])
    assert "torch" in heavy


def _drop_verdicts(cache_dir: Path) -> None:
    """Every cached adapter verdict removed: the next full run checks through PEFT."""
    cache = ArtifactCache(cache_dir)
    try:
        keys = [e["key"] for e in cache.entries() if e.get("label") == "adapter verdict"]
        assert keys and all(cache._drop(key) for key in keys)
    finally:
        cache.close()


def test_without_the_cached_verdict_the_full_path_checks_again(
    pair, tmp_path, monkeypatch, full_runs
):
    out = tmp_path / "out"
    _warmed(pair, out, monkeypatch, "--rank", RANK)
    expected = _files(out)
    _drop_verdicts(tmp_path / "cache")
    doc = _svd(pair, out, "--rank", RANK)
    assert len(full_runs) == 3 and doc["verification"]["cached"] is False
    assert doc["verification"]["structural"]["ok"] is True
    files = _files(out)
    for name, data in expected.items():
        if not name.endswith(".json"):  # the documents say the verdict was not cached
            assert files[name] == data, name


def test_a_corrupt_payload_is_never_served_warm(pair, tmp_path, monkeypatch, full_runs):
    """One byte flipped in a cached U: the hash fails, the full path recomputes that module
    and the outputs are the right ones, not the corrupt ones."""
    out = tmp_path / "out"
    _warmed(pair, out, monkeypatch, "--rank", RANK)
    expected = _files(out)
    payload = sorted((tmp_path / "cache" / "payloads").rglob("*.safetensors"))[0]
    data = bytearray(payload.read_bytes())
    size = int.from_bytes(data[:8], "little")
    start = json.loads(data[8 : 8 + size])["U"]["data_offsets"][0]
    data[8 + size + start + 3] ^= 0x40  # U[0, 0]'s exponent: a number the rank-r factors use
    payload.write_bytes(bytes(data))
    doc = _svd(pair, out, "--rank", RANK)
    assert len(full_runs) == 3 and doc["cache"] == {"hits": 13, "misses": 1}
    files = _files(out)
    for name in ("svd_factors_rank4.safetensors", "adapter_rank4/adapter_model.safetensors"):
        assert files[name] == expected[name]


def test_changed_tuned_weights_miss_the_memo(pair, tmp_path, monkeypatch, full_runs):
    """A touched file (same bytes, new mtime) and a rewritten one both run the full path;
    the rewritten weights give other factors."""
    from safetensors.torch import load_file, save_file

    out = tmp_path / "out"
    _warmed(pair, out, monkeypatch, "--rank", RANK)
    expected = _files(out)
    weights = pair[1] / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    _svd(pair, out, "--rank", RANK)
    assert len(full_runs) == 3
    assert _files(out)["svd_factors_rank4.safetensors"] == expected["svd_factors_rank4.safetensors"]
    tensors = load_file(weights)
    name = "model.layers.0.self_attn.q_proj.weight"
    tensors[name] = tensors[name] * 1.5
    save_file(tensors, weights, metadata={"format": "pt"})
    _svd(pair, out, "--rank", RANK)
    assert len(full_runs) == 4
    assert _files(out)["svd_factors_rank4.safetensors"] != expected["svd_factors_rank4.safetensors"]


@pytest.mark.parametrize(
    "other",
    [("--rank", "3"), ("--rank", RANK, "--split", "sqrt"), ("--rank", RANK, "--no-probe")],
    ids=["rank", "split", "probe"],
)
def test_other_options_run_the_full_path(pair, tmp_path, monkeypatch, full_runs, other):
    out = tmp_path / "out"
    _warmed(pair, out, monkeypatch, "--rank", RANK)
    _svd(pair, out, *other)
    assert len(full_runs) == 3
    _svd(pair, out, "--rank", RANK)  # the first options are still warm
    assert len(full_runs) == 3


def test_a_run_that_decomposed_keeps_no_memo(pair, tmp_path, full_runs):
    """The memo comes from a run that read every factor from the cache: a cold run's own
    results are not what a repeat reads, so the second run is full and the third warm."""
    for expected in (1, 2, 2):
        _svd(pair, tmp_path / "out", "--rank", RANK)
        assert len(full_runs) == expected


def test_edited_package_code_misses_the_memo(pair, tmp_path, monkeypatch, full_runs):
    """An edited checkout keeps its version number: the memo key holds a digest of the
    package's sources, so a change there runs the full path instead of replaying what the
    older code wrote."""
    out = tmp_path / "out"
    _warmed(pair, out, monkeypatch, "--rank", RANK)
    digest = svd_warm._code_digest()
    assert len(digest) == 64 and digest == svd_warm._code_digest()
    monkeypatch.setattr(svd_warm, "_code_digest", lambda: "0" * 64)
    _svd(pair, out, "--rank", RANK)
    assert len(full_runs) == 3


def test_a_cpu_runs_memo_never_serves_another_device(pair, tmp_path, monkeypatch, full_runs):
    """The warm path serves any --device, each from its own memo (the device is in the key):
    after a CPU run's memo, `--device cuda` still runs the full path, which checks the GPU."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA: the full path's device check must refuse")
    out = tmp_path / "out"
    _warmed(pair, out, monkeypatch, "--rank", RANK)
    base, tuned = pair
    result = invoke(
        "svd", "-b", base, "-t", tuned, "-o", out, "--no-plot", "--rank", RANK, "--device", "cuda"
    )
    assert_user_error(result, "CUDA is not available", "--device cpu")
    assert len(full_runs) == 3
    _svd(pair, out, "--rank", RANK)  # the CPU memo still serves the CPU repeat
    assert len(full_runs) == 3
    from svdlora_cli.workflows.svd import SvdOptions

    on_gpu = SvdOptions(base_model=str(base), teacher_model=str(tuned), rank=4, device="cuda")
    assert svd_warm.eligible(on_gpu, ArtifactCache(tmp_path / "cache"))  # its own memo, on a GPU
