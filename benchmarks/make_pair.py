"""Write a synthetic base/tuned checkpoint pair with a real architecture's shapes.

    python benchmarks/make_pair.py --shape qwen2.5-0.5b --out /tmp/pairs/q05

Both models are sharded bf16 safetensors with `model.safetensors.index.json`
and a Qwen2 `config.json`, so `from_pretrained` loads them. tuned = base + a
planted delta with a slowly decaying rank-64 spectrum plus dense noise, at
about 1% of ||W|| (fine-tune sized). Tensors are generated and written shard by
shard, so the generator itself needs only about one shard of memory.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

SHAPES = {
    # hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings
    "tiny": (64, 128, 2, 4, 2, 1000, True),
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 151936, True),
    "qwen2.5-1.5b": (1536, 8960, 28, 12, 2, 151936, True),
    "qwen2.5-7b": (3584, 18944, 28, 28, 4, 152064, False),
}


def tensors(shape: str):
    """(name, shape, is_target) in checkpoint order."""
    hidden, inter, layers, heads, kv, vocab, tied = SHAPES[shape]
    head_dim = hidden // heads
    yield "model.embed_tokens.weight", (vocab, hidden), False
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
        yield "lm_head.weight", (vocab, hidden), False


def config(shape: str) -> dict:
    hidden, inter, layers, heads, kv, vocab, tied = SHAPES[shape]
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
    u = torch.randn(m, k, generator=gen) / math.sqrt(m)
    v = torch.randn(k, n, generator=gen) / math.sqrt(n)
    s = torch.arange(1, k + 1, dtype=torch.float32) ** -0.5
    low = (u * s) @ v
    noise = torch.randn(m, n, generator=gen)
    low = low / low.norm() * 0.8
    noise = noise / noise.norm() * 0.2
    return (low + noise) * scale * w.norm()


def write_pair(shape: str, out: Path, shard_bytes: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for name in ("base", "tuned"):
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / "config.json").write_text(json.dumps(config(shape), indent=2))
    weight_map: dict[str, str] = {}
    shard: dict[str, dict[str, torch.Tensor]] = {"base": {}, "tuned": {}}
    size, index = 0, 0
    specs = list(tensors(shape))

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
        if len(dims) == 1:
            w = (
                1.0 + 0.02 * torch.randn(dims, generator=gen)
                if "norm" in tensor_name
                else 0.02 * torch.randn(dims, generator=gen)
            )
        else:
            w = 0.02 * torch.randn(dims, generator=gen)
        tuned = w + planted_delta(w, gen) if target else w
        shard["base"][tensor_name] = w.to(torch.bfloat16)
        shard["tuned"][tensor_name] = tuned.to(torch.bfloat16)
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
    print(f"wrote {out} ({len(files)} shards per model, {total / 1e9:.2f} GB per model)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shard-gb", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_pair(args.shape, args.out, int(args.shard_gb * 1e9), args.seed)


if __name__ == "__main__":
    main()
