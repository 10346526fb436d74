"""The scripts in examples/ run as documented."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_rank_sweep_decomposes_once(llama_pair, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "rank_sweep.py"),
            str(llama_pair.base),
            str(llama_pair.tuned),
            "--ranks",
            "1",
            "2",
            "4",
            "--cache-dir",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(out.stdout)
    assert [r["rank"] for r in rows] == [1, 2, 4]
    assert [r["svd_calls"] for r in rows] == [0, 0, 14]  # the largest rank ran first
    energies = [r["total_energy"] for r in rows]
    assert energies == sorted(energies) and energies[-1] > 0.99
