"""Tiny deterministic model pairs: tuned = base + a planted rank-k delta + small noise.

Also the CLI helpers every test module imports: `from tests.conftest import invoke, ...`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

PLANTED_RANK = 3
NOISE = 1e-4


@dataclass
class Pair:
    base: Path
    tuned: Path
    arch: str
    deltas: dict[str, torch.Tensor]  # target tensor name -> planted (stored-orientation) delta


def tiny_config(arch: str):
    """Two layers, hidden size 32: Llama, Qwen2 or GPT-2 (vocab 96)."""
    from svdlora_cli.models.tiny import tiny_config as library_config

    return library_config(arch, hidden=32, layers=2, vocab=96)


def tiny_model(arch: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch)).eval()


def planted_delta(
    shape: tuple[int, int], rank: int, gen: torch.Generator, scale: float = 0.05
) -> torch.Tensor:
    """scale * sum_i 2^-i u_i v_i^T + noise: a known rank-`rank` structure."""
    m, n = shape
    u, _ = torch.linalg.qr(torch.randn(m, rank, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(n, rank, generator=gen))
    s = scale * torch.tensor([2.0**-i for i in range(rank)])
    return (u * s) @ v.T + NOISE * torch.randn(m, n, generator=gen)


def build_pair(
    root: Path,
    arch: str = "llama",
    rank: int = PLANTED_RANK,
    change_embedding: bool = True,
    shard_size: str | None = None,
    seed: int = 0,
) -> Pair:
    """Save base and tuned folders; every default target gets a planted delta."""
    from svdlora_cli.models.targets import is_default_target

    base = tiny_model(arch, seed)
    base_dir, tuned_dir = root / f"{arch}-base", root / f"{arch}-tuned"
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    base.save_pretrained(base_dir, **kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    deltas = {}
    state = base.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            if is_default_target(name, tuple(tensor.shape)):
                deltas[name] = planted_delta(tuple(tensor.shape), rank, gen)
                tensor.add_(deltas[name])
        if change_embedding:
            emb = next(n for n in state if "embed_tokens" in n or n.endswith("wte.weight"))
            state[emb].add_(0.01 * torch.randn(state[emb].shape, generator=gen))
    base.save_pretrained(tuned_dir, **kwargs)
    return Pair(base_dir, tuned_dir, arch, deltas)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, tmp_path_factory, monkeypatch):
    """Never touch the user's cache or workspace; no progress bars in captured output.

    The measured device peak is cached once per test session, child processes included.
    """
    monkeypatch.setenv("SVDLORA_CACHE_DIR", str(tmp_path / "cache"))
    peaks = tmp_path_factory.getbasetemp() / "device_peaks.json"
    monkeypatch.setenv("SVDLORA_PEAK_CACHE", str(peaks))
    monkeypatch.delenv("SVDLORA_PEAK_TFLOPS", raising=False)
    monkeypatch.setenv("SVDLORA_NO_PROGRESS", "1")
    monkeypatch.delenv("SVDLORA_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def llama_pair(tmp_path_factory) -> Pair:
    return build_pair(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="session")
def qwen2_pair(tmp_path_factory) -> Pair:
    return build_pair(tmp_path_factory.mktemp("qwen2"), "qwen2")


@pytest.fixture(scope="session")
def gpt2_pair(tmp_path_factory) -> Pair:
    return build_pair(tmp_path_factory.mktemp("gpt2"), "gpt2")


@pytest.fixture(scope="session")
def sharded_pair(tmp_path_factory) -> Pair:
    return build_pair(tmp_path_factory.mktemp("sharded"), "qwen2", shard_size="40KB")


def build_tiny_llm(folder: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A tiny causal LM with a char tokenizer saved as an HF folder."""
    from svdlora_cli.models.tiny import build_tiny_model

    return build_tiny_model(folder, arch, hidden=32, layers=2, seed=seed)


def peft_made_adapter(base: Path, config: object, folder: Path) -> Path:
    """A LoRA that PEFT itself makes and saves on `base` with `config` (a LoraConfig), its
    lora_B drawn normal (seed 0) so that every module's delta is non-zero."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param)
    model.save_pretrained(folder)
    return folder


def write_rows(path: Path, n: int = 12, offset: int = 0) -> Path:
    """Short arithmetic rows in the {question, answer} shape."""
    rows = [
        {
            "question": f"What is {i} plus {i + 3}?",
            "answer": f"{i} + {i + 3} = {2 * i + 3}\n#### {2 * i + 3}",
        }
        for i in range(offset, offset + n)
    ]
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> Path:
    return build_tiny_llm(tmp_path_factory.mktemp("tinyllm") / "base")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    return write_rows(root / "train.json", 12), write_rows(root / "eval.json", 6, offset=50)


# The training options every tiny-model command test passes: short rows, small batches, CPU.
TINY_RUN = ("--batch-size", "4", "--max-length", "64", "--device", "cpu")


def invoke(*args: object):
    """`svdlora ARGS` in this process through CliRunner (stdout and stderr kept apart)."""
    from typer.testing import CliRunner

    from svdlora_cli.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def invoke_json(*args: object) -> dict:
    """The one JSON document of a successful `svdlora ARGS --json`."""
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output + str(result.exception)
    return json.loads(result.stdout)


def assert_user_error(result, *fragments: str) -> None:
    """Exit 1, nothing on stdout, and stderr ending in one `Error:` line and one `Hint:` line."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[errors[0] + 1].startswith("Hint: "), lines
    assert errors[0] + 2 == len(lines), lines  # the error ends the output
    for fragment in fragments:
        assert fragment in result.stderr
    assert result.stdout == ""
