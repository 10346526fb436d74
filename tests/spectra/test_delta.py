"""dW statistics against an independent computation, and untargeted changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from svdlora_cli.errors import NonFiniteDeltaError
from svdlora_cli.spectra.delta import delta_matrix, run_delta
from svdlora_cli.store.cache import ArtifactCache


def test_delta_stats_match_numpy(llama_pair, tmp_path):
    result = run_delta(str(llama_pair.base), str(llama_pair.tuned), ArtifactCache(tmp_path / "c"))
    base = load_file(llama_pair.base / "model.safetensors")
    tuned = load_file(llama_pair.tuned / "model.safetensors")
    assert len(result.modules) == 14
    for record in result.modules:
        w = base[record.name].double().numpy()
        dw = tuned[record.name].double().numpy() - w
        assert record.delta_norm == pytest.approx(np.linalg.norm(dw), rel=1e-5)
        assert record.base_norm == pytest.approx(np.linalg.norm(w), rel=1e-6)
        assert record.rel_change == pytest.approx(np.linalg.norm(dw) / np.linalg.norm(w), rel=1e-5)
        assert record.max_abs == pytest.approx(np.abs(dw).max(), rel=1e-4)
    summary = result.summary
    assert summary["targeted_share"] + summary["untargeted_share"] == pytest.approx(1.0)
    assert set(summary["by_group"]) == {"attention", "mlp"}


def test_untargeted_report_catches_a_changed_embedding(llama_pair, tmp_path):
    result = run_delta(str(llama_pair.base), str(llama_pair.tuned), ArtifactCache(None))
    changed = [r for r in result.untargeted if r.changed]
    assert [r.name for r in changed] == ["model.embed_tokens.weight"]
    assert changed[0].kind == "embedding"
    emb_sq = changed[0].delta_sq
    total_sq = emb_sq + sum(r.delta_sq for r in result.modules)
    assert result.summary["untargeted_share"] == pytest.approx(emb_sq / total_sq)
    assert result.summary["untargeted_by_kind"]["embedding"]["count"] == 1


def test_nan_delta_is_an_error():
    with pytest.raises(NonFiniteDeltaError, match="NaN/Inf"):
        delta_matrix("x.weight", torch.zeros(2, 2), torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))


def test_identical_models_give_zero_and_a_warning(llama_pair):
    result = run_delta(str(llama_pair.base), str(llama_pair.base), ArtifactCache(None))
    assert result.summary["all_zero"] and result.summary["targeted_share"] == 0.0
    assert any("identical" in w for w in result.warnings)


def test_blockwise_reads_give_the_same_statistics(llama_pair, monkeypatch):
    from svdlora_cli.spectra import delta

    whole = run_delta(str(llama_pair.base), str(llama_pair.tuned), ArtifactCache(None))
    monkeypatch.setattr(delta, "STATS_CHUNK", 100)  # every tensor is read in many blocks
    blocks = run_delta(str(llama_pair.base), str(llama_pair.tuned), ArtifactCache(None))
    for a, b in zip(
        whole.untargeted + whole.modules, blocks.untargeted + blocks.modules, strict=True
    ):
        assert a.name == b.name
        assert b.delta_norm == pytest.approx(a.delta_norm, rel=1e-6)
        assert b.base_norm == pytest.approx(a.base_norm, rel=1e-6) and b.max_abs == a.max_abs
