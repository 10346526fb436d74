"""What the init tests share: the tiny setup (tokenizer, rows, plan, the seed's init batches
and a probe of their rows), an arm's model at step 0 as `train_student` builds it, logits."""

from __future__ import annotations

from typing import Any

import torch

from svdlora_cli.data import collate, prepare_data
from svdlora_cli.models.loading import load_model, load_tokenizer
from svdlora_cli.training.accelerator import make_accelerator
from svdlora_cli.training.config import TrainConfig
from svdlora_cli.training.data_inits import init_batches
from svdlora_cli.training.student import base_plan, build_student

RANK = 4
CONFIG = TrainConfig(
    epochs=3, learning_rate=3e-3, batch_size=4, max_length=64, device="cpu", max_steps=3
)


def logits(model: Any, probe: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits


def init_setup(tiny_llm: Any, tiny_data: Any) -> dict[str, Any]:
    """The tiny model's tokenizer, training rows, rank-RANK plan, the seed's init batches,
    the probe of their rows, and the untouched base with its logits on the probe."""
    tokenizer = load_tokenizer(str(tiny_llm))
    data = prepare_data(tokenizer, str(tiny_data[0]), None, CONFIG.max_length)
    batches = init_batches(len(data.train), CONFIG.batch_size, CONFIG.seed)
    probe = collate([i for b in batches for i in b], data.train, tokenizer.pad_token_id)
    base = load_model(str(tiny_llm)).eval()
    return {
        "tokenizer": tokenizer,
        "train": data.train,
        "plan": base_plan(str(tiny_llm), RANK, None),
        "batches": batches,
        "probe": probe,
        "base": base,
        "base_logits": logits(base, probe),
    }


def start_model(
    tiny_llm: Any,
    setup: dict[str, Any],
    init: str,
    config: TrainConfig = CONFIG,
    plan: Any = None,
) -> Any:
    """The arm's model at step 0, as train_student builds it."""
    model = build_student(
        load_model(str(tiny_llm)),
        plan or setup["plan"],
        init,
        config,
        0.0,
        setup["train"],
        setup["tokenizer"].pad_token_id,
        make_accelerator("cpu", "no"),
    )
    return model.eval()
