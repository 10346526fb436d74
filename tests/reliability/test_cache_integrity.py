"""Corrupt payloads are caught and recomputed; concurrent writers agree; eviction holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from svdlora_cli.spectra.svd_step import run_svd
from svdlora_cli.store.cache import ArtifactCache, parse_size
from tests.conftest import assert_user_error, invoke, invoke_json
from tests.reliability.conftest import COUNTS


def _payloads(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "payloads").rglob("*.safetensors"))


def test_corrupt_truncated_and_missing_payloads_are_detected(llama_pair, tmp_path):
    cache_dir = tmp_path / "cache"
    args = (
        "svd",
        "-b",
        llama_pair.base,
        "-t",
        llama_pair.tuned,
        "--rank",
        "3",
        "--cache-dir",
        cache_dir,
        "-o",
        tmp_path / "o",
    )
    first = invoke_json(*args)
    flipped, cut, gone = _payloads(cache_dir)[:3]
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    cut.write_bytes(cut.read_bytes()[:100])
    gone.unlink()
    result = invoke("cache", "verify", "--cache-dir", cache_dir, "--json")
    assert result.exit_code == 1 and "Error: 3 cache payload(s) failed" in result.stderr
    assert len(json.loads(result.stdout)["bad"]) == 3  # the report still comes out
    report = invoke_json("cache", "verify", "--fix", "--cache-dir", cache_dir)
    assert report["checked"] == 14 and report["ok"] == 11 and len(report["bad"]) == 3
    COUNTS["corruptions detected"] += len(report["bad"])
    again = invoke_json(*args)
    assert again["cache"] == {"hits": 11, "misses": 3}
    assert [m["energy"] for m in again["modules"]] == [m["energy"] for m in first["modules"]]
    assert invoke_json("cache", "verify", "--cache-dir", cache_dir)["ok"] == 14


def test_two_processes_computing_the_same_keys(qwen2_pair, tmp_path):
    cache_dir = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    script = Path(__file__).with_name("slow_svd.py")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                "svd",
                "-b",
                str(qwen2_pair.base),
                "-t",
                str(qwen2_pair.tuned),
                "--rank",
                "3",
                "--no-plot",
                "-o",
                str(tmp_path / f"o{i}"),
                "--cache-dir",
                str(cache_dir),
                "--json",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    docs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        docs.append(json.loads(out))
    assert [m["energy"] for m in docs[0]["modules"]] == [m["energy"] for m in docs[1]["modules"]]
    cache = ArtifactCache(cache_dir)
    try:
        report = cache.verify()
        assert report["checked"] == 14 and report["ok"] == 14
        assert len(_payloads(cache_dir)) == 14
    finally:
        cache.close()


def test_cache_size_evicts_least_recently_used(llama_pair, tmp_path):
    cache_dir = tmp_path / "cache"
    run_svd(str(llama_pair.base), str(llama_pair.tuned), ArtifactCache(cache_dir), rank=2)
    total = sum(p.stat().st_size for p in _payloads(cache_dir))
    limit = total // 2
    doc = invoke_json(
        "svd",
        "-b",
        llama_pair.base,
        "-t",
        llama_pair.tuned,
        "--rank",
        "2",
        "--include",
        "q_proj",
        "--cache-dir",
        cache_dir,
        "--cache-size",
        str(limit),
        "-o",
        tmp_path / "o",
    )
    assert doc["cache"]["hits"] == 2
    remaining = _payloads(cache_dir)
    assert sum(p.stat().st_size for p in remaining) <= limit
    cache = ArtifactCache(cache_dir)
    try:
        kept = {e["tensor"] for e in cache.entries() if e["kind"] == "svd"}
        assert {
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.1.self_attn.q_proj.weight",
        } <= kept
        assert cache.verify()["ok"] == len(kept) == len(remaining)
    finally:
        cache.close()
    assert (
        parse_size("2GB") == 2 * 10**9
        and parse_size("64MiB") == 64 * 2**20
        and parse_size("1000") == 1000
    )
    assert_user_error(
        invoke(
            "svd",
            "--rank",
            "2",
            "-b",
            llama_pair.base,
            "-t",
            llama_pair.tuned,
            "--cache-size",
            "lots",
        ),
        "cannot read the size",
    )
