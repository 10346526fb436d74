"""The seed's approach, as the baseline: load both models whole in fp32, full SVD of every dW.

python benchmarks/naive_extract.py BASE TUNED --rank 16 --out result.json
"""

from __future__ import annotations

import argparse
import json
import re

import torch

TARGET = re.compile(r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$")


def main() -> None:
    from transformers import AutoModelForCausalLM

    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("tuned")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    tuned = AutoModelForCausalLM.from_pretrained(args.tuned, dtype=torch.float32)
    tuned_modules = dict(tuned.named_modules())
    result = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, torch.nn.Linear) and TARGET.search(name):
                dw = tuned_modules[name].weight - module.weight
                s = torch.linalg.svd(dw, full_matrices=False).S
                total = float((dw.double() ** 2).sum())
                energy = float((s[: args.rank].double() ** 2).sum()) / total
                result[name] = {"energy": energy, "top": s[: args.rank].tolist()}
    with open(args.out, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
