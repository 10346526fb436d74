"""SIGKILL at random points never leaves an unreadable cache entry, and the rerun matches."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from svdlora_cli.store.cache import ArtifactCache
from tests.reliability.conftest import COUNTS

SLOW_SVD = Path(__file__).with_name("slow_svd.py")


def _svd(pair, out: Path, cache: Path) -> list[str]:
    return [
        sys.executable,
        str(SLOW_SVD),
        "svd",
        "-b",
        str(pair.base),
        "-t",
        str(pair.tuned),
        "--rank",
        "3",
        "--no-plot",
        "-o",
        str(out),
        "--cache-dir",
        str(cache),
        "--json",
    ]


def _payloads(cache_dir: Path) -> int:
    return len(list((cache_dir / "payloads").rglob("*.safetensors")))


def _all_entries_readable(cache_dir: Path) -> int:
    cache = ArtifactCache(cache_dir)
    try:
        entries = [e for e in cache.entries() if e["kind"] == "svd"]
        for entry in entries:
            assert cache.get_decomposition(entry["key"], 1) is not None, entry
        return len(entries)
    finally:
        cache.close()


def test_sigkill_at_random_points_then_resume(qwen2_pair, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    reference = subprocess.run(
        _svd(qwen2_pair, tmp_path / "ref", tmp_path / "ref-cache"),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    expected = json.loads(reference.stdout)
    rng = random.Random(7)
    cache, out = tmp_path / "cache", tmp_path / "out"
    kills = 0
    stored_before = 0
    for _ in range(6):
        proc = subprocess.Popen(
            _svd(qwen2_pair, out, cache),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Kill after a random number (0-2) of new payloads, at a random moment within the next
        # decomposition: during imports, fingerprinting, decomposing or writing a payload.
        goal = _payloads(cache) + rng.randint(0, 2)
        while proc.poll() is None and _payloads(cache) < goal:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.2))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        stored = _all_entries_readable(cache)
        assert stored >= stored_before
        stored_before = stored
    assert kills >= 5
    COUNTS["kills survived"] += kills
    final = subprocess.run(
        _svd(qwen2_pair, out, cache), env=env, capture_output=True, text=True, check=True
    )
    doc = json.loads(final.stdout)
    assert [m["energy"] for m in doc["modules"]] == [m["energy"] for m in expected["modules"]]
    mine = load_file(out / "svd_factors_rank3.safetensors")
    theirs = load_file(tmp_path / "ref" / "svd_factors_rank3.safetensors")
    assert mine.keys() == theirs.keys() and all((mine[k] == theirs[k]).all() for k in mine)
    print(
        f"\nreliability: {kills} SIGKILLs survived, {stored_before} entries intact before the rerun"
    )


def test_sigint_exits_130_and_keeps_finished_entries(qwen2_pair, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    # A test runner started in the background inherits an ignored SIGINT; restore the
    # default in the child so it behaves as it does in a terminal.
    proc = subprocess.Popen(
        _svd(qwen2_pair, tmp_path / "out", tmp_path / "cache"),
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # A payload is linked, then indexed; one interrupted in between is removed again. The
    # modules are stored one after another, so a third payload on disk means that the
    # first two are indexed.
    while proc.poll() is None and _payloads(tmp_path / "cache") < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Interrupted" in stderr and "Traceback" not in stderr
    # Every payload on disk is indexed and reads back (at least the 2 waited for).
    assert _all_entries_readable(tmp_path / "cache") == _payloads(tmp_path / "cache") >= 2
