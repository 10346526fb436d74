"""Another rank cut warm from a run's cached spectra: the full path's figures and bytes, a
verdict carried from PEFT's check only to adapters of the same format and their own
factors, no torch, and the full path whenever anything differs."""

from __future__ import annotations

import json

import pytest

from tests.workflows.test_svd_warm import _child, _drop_verdicts, _files, _svd

NO_PROBE = "--no-probe"  # the tiny pair is probed by default; the probe proves per adapter


def _without(doc: dict, *fields: str) -> dict:
    return {k: v for k, v in doc.items() if k not in fields}


CASES = {
    "b": ("qwen2", ()),
    "sqrt": ("qwen2", ("--split", "sqrt")),
    "gpt2-conv1d": ("gpt2", ()),  # fan_in_fan_out adapters
}


@pytest.mark.parametrize("case", list(CASES))
def test_another_rank_is_cut_warm_with_the_full_paths_figures_and_bytes(
    case, pair, gpt2_pair, tmp_path, monkeypatch, full_runs
):
    """Cold rank 4, then rank 2 cut warm; then rank 2 by the full path on the same cache:
    the same document (but the verdict's origin), the same factor and adapter bytes, and
    the carried verdict is PEFT's own figures for these bytes."""
    arch, extra = CASES[case]
    models = pair if arch == "qwen2" else (gpt2_pair.base, gpt2_pair.tuned)
    _svd(models, tmp_path / "cold", "--rank", "4", NO_PROBE, *extra)
    assert len(full_runs) == 1
    warm = _svd(models, tmp_path / "warm", "--rank", "2", NO_PROBE, *extra)
    assert len(full_runs) == 1, "the cut ran the decomposition step"
    _drop_verdicts(tmp_path / "cache")  # the full path checks rank 2 through PEFT itself
    full = _svd(
        models,
        tmp_path / "full",
        "--rank",
        "2",
        NO_PROBE,
        *extra,
        warm=False,
        monkeypatch=monkeypatch,
    )
    assert len(full_runs) == 2
    assert _without(warm, "verification", "artifacts") == _without(
        full, "verification", "artifacts"
    )
    assert warm["rank"] == 2 and {m["rank"] for m in warm["modules"]} == {2}
    carried, checked = warm["verification"], full["verification"]
    assert carried["carried_from"]["rank"] == 4 and carried["cached"] is False
    assert _without(carried, "carried_from") == checked
    report = (tmp_path / "warm" / "svd_report_rank2.txt").read_text()
    assert "carried: PEFT wrapped each of the" in report and "rank-4 adapter" in report
    assert "this file's B @ A of each of" in report
    assert "carried" not in (tmp_path / "full" / "svd_report_rank2.txt").read_text()
    warm_files, full_files = _files(tmp_path / "warm"), _files(tmp_path / "full")
    for name, data in full_files.items():
        if name.endswith(".safetensors") or name.endswith("adapter_config.json"):
            assert warm_files[name] == data, name


def test_the_summary_follows_the_rank_and_a_clamped_rank_runs_the_full_path(
    pair, tmp_path, full_runs
):
    """The summary is recomputed at the new rank, not copied from the first run's. A rank
    beyond some modules' min(out, in) clamps them, which gives the adapter a rank_pattern:
    not the checked format, so the full path checks it through PEFT."""
    cold = _svd(pair, tmp_path / "cold", "--rank", "2", NO_PROBE)
    cut = _svd(pair, tmp_path / "cut", "--rank", "3", NO_PROBE)
    assert len(full_runs) == 1 and "carried_from" in cut["verification"]
    assert cut["summary"]["mean_energy"] > cold["summary"]["mean_energy"]
    assert cut["summary"]["adapter_parameters"] == sum(3 * sum(m["shape"]) for m in cut["modules"])
    assert cut["summary"]["by_module_type"] != cold["summary"]["by_module_type"]
    smallest = min(min(m["shape"]) for m in cold["modules"])
    wide = _svd(pair, tmp_path / "wide", "--rank", str(smallest + 1), NO_PROBE)
    assert len(full_runs) == 2 and "carried_from" not in wide["verification"]
    assert any(f"rank {smallest + 1} exceeds min(out, in)" in w for w in wide["warnings"])


def test_the_cut_imports_no_torch_and_its_repeat_replays(pair, tmp_path, full_runs):
    base, tuned = pair
    _svd(pair, tmp_path / "cold", "--rank", "4", NO_PROBE)
    args = ["svd", "-b", base, "-t", tuned, "-o", tmp_path / "out", "--no-plot", NO_PROBE]
    stdout, heavy = _child([*args, "--rank", "3", "--json"])
    assert heavy == []
    first = json.loads(stdout)
    assert first["verification"]["cached"] is False and first["rank"] == 3
    again = _svd(pair, tmp_path / "out", "--rank", "3", NO_PROBE)
    assert len(full_runs) == 1
    assert again["verification"]["cached"] is True
    assert again["verification"]["carried_from"] == first["verification"]["carried_from"]


@pytest.mark.parametrize(
    "other",
    [("--rank", "2"), ("--rank", "80", NO_PROBE), ("--energy", "0.9", NO_PROBE)],
    ids=["probed", "beyond-cache-rank", "energy"],
)
def test_what_the_cut_cannot_vouch_for_runs_the_full_path(pair, tmp_path, full_runs, other):
    """The probe proves per adapter; a rank beyond --cache-rank or an --energy run takes
    other factors: each runs the full path."""
    _svd(pair, tmp_path / "cold", "--rank", "4", NO_PROBE)
    doc = _svd(pair, tmp_path / "out", *other)
    assert len(full_runs) == 2
    assert "carried_from" not in doc["verification"]


def test_a_probed_run_keeps_no_family_memo(pair, tmp_path, full_runs):
    _svd(pair, tmp_path / "cold", "--rank", "4")  # probed by default (a tiny model)
    _svd(pair, tmp_path / "out", "--rank", "2", NO_PROBE)
    assert len(full_runs) == 2


def test_a_refused_carry_leaves_nothing_behind(pair, tmp_path, monkeypatch, full_runs):
    """When the written adapter does not carry the verdict, the cut raises before anything
    is moved into place and the full path checks through PEFT."""
    from svdlora_cli.adapters import sibling

    _svd(pair, tmp_path / "cold", "--rank", "4", NO_PROBE)
    monkeypatch.setattr(sibling, "carried_verdict", lambda *a: None)
    doc = _svd(pair, tmp_path / "out", "--rank", "2", NO_PROBE)
    assert len(full_runs) == 2 and "carried_from" not in doc["verification"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")) == []
