"""The verdict key: torch-free, the same for torch tensors and numpy arrays of the same
factors, and different for any other adapter byte, factor bit, base or probe setting."""

from __future__ import annotations

import numpy as np
import torch

from svdlora_cli.adapters.factors import LowRankFactors, write_peft_adapter
from svdlora_cli.adapters.verdict import factors_digest, verdict_key


def _factors(kind: str) -> dict[str, LowRankFactors]:
    gen = np.random.default_rng(0)
    B, A = gen.standard_normal((8, 2), dtype=np.float32), gen.standard_normal((2, 6), np.float32)
    S = np.ones(2, np.float32)
    if kind == "torch":
        B, A, S = (torch.from_numpy(x.copy()) for x in (B, A, S))
    return {"m.layers.0.q_proj": LowRankFactors(B=B, A=A, S=S)}


def test_the_key_is_the_same_for_tensors_and_arrays_and_moves_with_every_input(
    tmp_path, qwen2_pair
):
    arrays, tensors = _factors("numpy"), _factors("torch")
    assert factors_digest(arrays) == factors_digest(tensors)
    base = str(qwen2_pair.base)
    adapter = write_peft_adapter(tmp_path / "a", arrays, list(arrays), base)
    key = verdict_key(adapter, "fp", base, arrays, True)
    assert key is not None and key == verdict_key(adapter, "fp", base, tensors, True)
    one_ulp = {m: LowRankFactors(np.nextafter(f.B, 1), f.A, f.S) for m, f in arrays.items()}
    others = [
        verdict_key(adapter, "fp", base, one_ulp, True),
        verdict_key(adapter, "other", base, arrays, True),
        verdict_key(adapter, "fp", base, arrays, False),
    ]
    (adapter / "adapter_config.json").write_text("{}")
    others.append(verdict_key(adapter, "fp", base, arrays, True))
    assert len({key, *others}) == 5
    assert verdict_key(adapter, None, base, arrays, True) is None


def test_the_factors_digest_is_their_float32_bytes():
    """The digest the verdicts were first cached under: name, then B's and A's shape and
    float32 bytes (so keys cached before the move still match)."""
    import hashlib

    factors = _factors("torch")
    digest = hashlib.sha256()
    for module, f in factors.items():
        digest.update(module.encode())
        for t in (f.B, f.A):
            digest.update(str(tuple(t.shape)).encode())
            digest.update(t.detach().float().contiguous().numpy().tobytes())
    assert factors_digest(factors) == digest.hexdigest()


def test_another_peft_or_transformers_version_is_checked_again(tmp_path, qwen2_pair, monkeypatch):
    """A verdict vouches for how these packages read the adapter: another version of any
    of them gives another key."""
    from svdlora_cli.adapters import verdict

    arrays = _factors("numpy")
    base = str(qwen2_pair.base)
    adapter = write_peft_adapter(tmp_path / "a", arrays, list(arrays), base)
    key = verdict_key(adapter, "fp", base, arrays, True)
    installed = verdict.reader_versions()
    assert installed["peft"] and installed["transformers"]
    for name in ("peft", "transformers", "safetensors", "torch"):
        monkeypatch.setattr(verdict, "reader_versions", lambda n=name: {**installed, n: "0.0"})
        assert verdict_key(adapter, "fp", base, arrays, True) != key, name
