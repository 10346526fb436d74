"""Cache payload files: their own index entry, and checks that read only the header."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from svdlora_cli.spectra.decompose import Decomposition
from svdlora_cli.store.payloads import (
    PAYLOAD_RECORD,
    check_payload,
    encode_payload,
    entry_from_payload,
    file_fields,
    read_payload,
)

KEY = "ab" + "0" * 62


@pytest.fixture
def payload() -> bytes:
    g = torch.Generator().manual_seed(0)
    U, S, Vh = torch.linalg.svd(torch.randn(7, 5, generator=g), full_matrices=False)
    dec = Decomposition(U[:, :3], S[:3], Vh[:3], float(S.square().sum()), "exact", False)
    entry = {"kind": "svd", "k": 3, "method": "exact", "complete": False, "fro_sq": dec.fro_sq}
    return encode_payload(KEY, dec, entry)


def _with_header(data: bytes, edit) -> bytes:
    """The same tensor bytes under an edited header."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + length :]


def test_round_trip_and_the_entry_the_payload_carries(payload, tmp_path):
    entry = entry_from_payload(KEY, payload)
    assert entry["k"] == 3 and entry["kind"] == "svd" and entry == {**entry, **file_fields(payload)}
    path = tmp_path / "p.safetensors"
    path.write_bytes(payload)
    assert check_payload(path, entry) == payload
    tensors = read_payload(path, entry)
    assert tensors["U"].shape == (7, 3) and tensors["S"].shape == (3,)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda h: h["S"].update(shape=[2]), "does not fit"),
        (lambda h: h["U"].update(data_offsets=[0, 10**6]), "does not fit"),
        (lambda h: h["Vh"].update(dtype="X9"), "malformed header entry"),
        (lambda h: h.pop("Vh"), "payload lacks"),
        (lambda h: h["__metadata__"].pop(PAYLOAD_RECORD), "carries no index entry"),
    ],
)
def test_a_tampered_header_is_refused_without_torch_reading_it(payload, edit, problem, tmp_path):
    bad = _with_header(payload, edit)
    with pytest.raises(ValueError, match=problem):
        entry_from_payload(KEY, bad)
    path = tmp_path / "p.safetensors"
    path.write_bytes(bad)
    if problem != "carries no index entry":  # check_payload trusts the index, not the metadata
        with pytest.raises(ValueError, match=problem):
            check_payload(path, file_fields(bad))


def test_truncated_and_foreign_payloads_are_refused(payload, tmp_path):
    with pytest.raises(ValueError, match="truncated"):
        entry_from_payload(KEY, payload[:20])
    with pytest.raises(ValueError, match="another key"):
        entry_from_payload("cd" + "0" * 62, payload)
    path = tmp_path / "p.safetensors"
    path.write_bytes(payload[:-4])
    with pytest.raises(ValueError, match="checksum"):
        check_payload(path, file_fields(payload))
