"""The tensor-reader interface: one reader per weight-file format, chosen by `format_for`."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from svdlora_cli.errors import CheckpointError
from svdlora_cli.models import checkpoints, formats
from svdlora_cli.models.checkpoints import TensorReader, open_checkpoint
from svdlora_cli.models.formats import (
    SAFETENSORS,
    TORCH_BIN,
    SafetensorsFormat,
    ShardReader,
    TorchBinFormat,
    format_for,
)
from svdlora_cli.models.quantized import Quantization

PACKAGE = Path(checkpoints.__file__).resolve().parents[1]


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w.fp32": torch.randn(7, 5, generator=g),
        "w.bf16": torch.randn(4, 9, generator=g).to(torch.bfloat16),
        "w.fp16": torch.randn(3, generator=g).to(torch.float16),
        "w.int": torch.arange(12, dtype=torch.int64).reshape(3, 4),
        "w.bool": torch.tensor([True, False, True]),
        "w.empty": torch.zeros(0, 4),
        "w.fp8": torch.randn(4, 4, generator=g).to(torch.float8_e4m3fn),
    }


def _read_all(fmt: formats.TensorFormat, file: Path) -> dict[str, torch.Tensor]:
    infos = fmt.header(file)
    handle = fmt.open(file)
    try:
        return {name: fmt.read(handle, info) for name, info in infos.items()}
    finally:
        fmt.close(handle)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        a, b = a.view(torch.uint8), b.view(torch.uint8)
    return torch.equal(a, b)


def test_safetensors_reader_matches_load_file(tmp_path):
    file = tmp_path / "model.safetensors"
    save_file(_state(), file)
    expected = load_file(file)
    got = _read_all(SAFETENSORS, file)
    assert set(got) == set(expected)
    assert all(_same(got[n], expected[n]) for n in expected)
    infos = SAFETENSORS.header(file)
    assert infos["w.bf16"].dtype == "BF16" and infos["w.bf16"].shape == (4, 9)
    with open(file, "rb") as handle:
        for name, info in infos.items():
            blocks = list(SAFETENSORS.chunks(handle, info, 6))
            assert all(b.numel() <= 6 for b in blocks)
            assert _same(torch.cat(blocks), expected[name].reshape(-1))


def test_bin_reader_matches_weights_only_torch_load(tmp_path):
    file = tmp_path / "pytorch_model.bin"
    torch.save(_state(), file)
    expected = torch.load(file, map_location="cpu", weights_only=True)
    got = _read_all(TORCH_BIN, file)
    assert set(got) == set(expected)
    assert all(_same(got[n], expected[n]) for n in expected)
    info = TORCH_BIN.header(file)["w.int"]
    assert (info.shape, info.dtype) == ((3, 4), "int64")
    handle = TORCH_BIN.open(file)
    assert torch.equal(torch.cat(list(TORCH_BIN.chunks(handle, info, 5))), torch.arange(12))


class _Code:  # pickled by reference: a weights-only load must refuse it
    pass


def test_bin_reader_never_unpickles_code(tmp_path):
    file = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.ones(2), "code": _Code()}, file)
    with pytest.raises(CheckpointError, match="weights-only PyTorch checkpoint"):
        TORCH_BIN.header(file)
    torch.save(torch.ones(2), file)
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        TORCH_BIN.header(file)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("model.safetensors", SafetensorsFormat),
        ("model-00001-of-00002.safetensors", SafetensorsFormat),
        ("adapter_model.safetensors", SafetensorsFormat),
        ("pytorch_model.bin", TorchBinFormat),
        ("pytorch_model-00001-of-00002.bin", TorchBinFormat),
    ],
)
def test_format_for_picks_the_reader_by_suffix(name, kind):
    assert isinstance(format_for(Path("/x") / name), kind)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("weights.npz", "not a weight file svdlora reads"),
        ("model", r"suffix \(none\)"),
        ("model.safetensors.index.json", "suffix .json"),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "suffix .gguf"),
    ],
)
def test_format_for_refuses_an_unknown_suffix(name, message):
    with pytest.raises(CheckpointError, match=message) as caught:
        format_for(Path("/x") / name)
    assert caught.value.hint and ("GGUF" in caught.value.hint) == name.endswith(".gguf")


def test_truncated_data_is_an_error_naming_the_tensor(tmp_path):
    file = tmp_path / "model.safetensors"
    save_file({"a": torch.ones(64), "b": torch.ones(64)}, file)
    infos = SAFETENSORS.header(file)
    data = file.read_bytes()
    file.write_bytes(data[:-16])  # the header now promises more than the file holds
    with pytest.raises(CheckpointError, match="truncated: tensor b"):
        SAFETENSORS.header(file)
    with open(file, "rb") as handle, pytest.raises(CheckpointError, match="ended inside tensor b"):
        SAFETENSORS.read(handle, infos["b"])


def test_large_tensors_stream_in_positioned_blocks(tmp_path, monkeypatch):
    file = tmp_path / "model.safetensors"
    weight = torch.randn(40, 25)
    save_file({"w": weight}, file)
    info = SAFETENSORS.header(file)["w"]

    def whole(*_args):
        raise AssertionError("a large tensor was read whole")

    monkeypatch.setattr(SafetensorsFormat, "read", whole)
    with open(file, "rb") as handle:
        blocks = list(SAFETENSORS.chunks(handle, info, 300))
    assert [b.numel() for b in blocks] == [300, 300, 300, 100]
    assert torch.equal(torch.cat(blocks), weight.reshape(-1))


class _Counting(SafetensorsFormat):
    def __init__(self) -> None:
        self.open_now = self.most = 0

    def open(self, file):
        self.open_now += 1
        self.most = max(self.most, self.open_now)
        return super().open(file)

    def close(self, handle):
        self.open_now -= 1
        super().close(handle)


def test_shard_reader_keeps_one_file_open(tmp_path):
    files = [tmp_path / f"model-{i}.safetensors" for i in range(3)]
    for i, file in enumerate(files):
        save_file({f"t{i}": torch.full((3,), float(i))}, file)
    fmt = _Counting()
    infos = {n: i for f in files for n, i in fmt.header(f).items()}
    reader = ShardReader(dict.fromkeys(files, fmt))
    for name in ["t0", "t1", "t0", "t2", "t2"]:
        assert torch.equal(reader.read(infos[name]), torch.full((3,), float(name[1])))
    reader.close()
    assert fmt.most == 1 and fmt.open_now == 0


def test_fp8_wrapper_dequantizes_on_read(tmp_path):
    g = torch.Generator().manual_seed(1)
    codes = torch.randn(6, 4, generator=g).to(torch.float8_e4m3fn)
    scale = torch.rand(6, 1, generator=g) + 0.5
    plain = torch.randn(5, 5, generator=g)
    save_file({"w.weight": codes, "w.weight_scale": scale}, tmp_path / "a.safetensors")
    save_file({"p.weight": plain}, tmp_path / "b.safetensors")
    infos = {**SAFETENSORS.header(tmp_path / "a.safetensors")}
    infos.update(SAFETENSORS.header(tmp_path / "b.safetensors"))
    quant = Quantization("fbgemm_fp8", {"w.weight": infos["w.weight_scale"]}, None, torch.bfloat16)
    shards = ShardReader({info.file: SAFETENSORS for info in infos.values()})
    reader = quant.reader(shards)
    expected = (codes.to(torch.float32) * scale).to(torch.bfloat16)
    assert torch.equal(reader.read(infos["w.weight"]), expected)
    assert torch.equal(torch.cat(list(reader.chunks(infos["w.weight"], 5))), expected.reshape(-1))
    assert torch.equal(reader.read(infos["p.weight"]), plain)  # not quantized: as stored
    assert torch.equal(torch.cat(list(reader.chunks(infos["p.weight"], 7))), plain.reshape(-1))
    assert _same(shards.read(infos["w.weight"]), codes)  # the base reader gives the codes
    shards.close()


def test_the_format_is_chosen_once_per_file(sharded_pair, tmp_path, monkeypatch):
    calls = []
    real = checkpoints.format_for
    monkeypatch.setattr(checkpoints, "format_for", lambda f: calls.append(f) or real(f))
    ckpt = open_checkpoint(sharded_pair.base)
    with TensorReader(ckpt) as reader:
        for name in ckpt.names():
            assert math.prod(reader.get(name).shape) == math.prod(ckpt.tensors[name].shape)
            list(reader.chunks(name, 64))
    assert sorted(calls) == sorted(ckpt.files)
    assert ckpt.format == "safetensors" and set(ckpt.formats.values()) == {SAFETENSORS}
    folder = tmp_path / "bin"
    folder.mkdir()
    torch.save(load_file(ckpt.files[0]), folder / "pytorch_model.bin")
    assert open_checkpoint(folder).formats == {folder / "pytorch_model.bin": TORCH_BIN}


# Looking at a weight file's suffix, outside formats.py: a `.suffix` test, an endswith()
# or a glob over a weight-file extension. Each allowed hit says why it is no format choice.
_EXT = r"\.(?:safetensors|bin|pt|pth|gguf|ckpt)"
_CHECKS = (
    re.compile(r"\.suffix(?:es)?\b"),
    re.compile(rf"endswith\([^)]*{_EXT}\b"),
    re.compile(rf"""["'][^"'\s]*\*[^"'\s]*{_EXT}["']"""),
)
_ALLOWED = {
    ("store/payloads.py", '"*.safetensors"'): "the cache's own payload files, not weights",
    ("models/weight_files.py", '"svd_factors_*.safetensors"'): "svdlora's outputs, by name",
}


def suffix_checks(package: Path) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if relative == "models/formats.py" or "__pycache__" in path.parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for check in _CHECKS:
                for match in check.finditer(line):
                    if (relative, match.group()) not in _ALLOWED:
                        found.append(f"{relative}:{number}: {line.strip()}")
    return found


def test_no_other_module_checks_weight_file_suffixes():
    found = suffix_checks(PACKAGE)
    assert not found, "weight-file suffix checks outside models/formats.py (use format_for):\n" + (
        "\n".join(found)
    )


@pytest.mark.parametrize(
    "line",
    [
        'if file.suffix == ".safetensors":',
        'kind = "bin" if path.suffixes[-1] == ".bin" else "st"',
        'if str(file).endswith(".safetensors"):',
        "if name.endswith(('.bin', '.pt')):",
        'found = folder.glob("*.gguf")',
        'patterns = ("pytorch_model*.bin",)',
    ],
)
def test_the_suffix_check_can_fail(tmp_path, line):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "formats.py").write_text('x = path.suffix == ".bin"\n')
    (tmp_path / "models" / "other.py").write_text(f"{line}\n")
    assert suffix_checks(tmp_path) == [f"models/other.py:1: {line}"]
