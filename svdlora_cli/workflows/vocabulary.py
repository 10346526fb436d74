"""One name per concept: the options several commands share, each declared once.

An options record places a shared flag on its field (`rank: int = RANK.field(16)`), so
`--rank` means the same in every command and reads the same in every --help; a command
that once spelled it otherwise keeps that spelling as a hidden alias. TrainConfig (in
training/) is filled by the TRAINING group, and FieldNames (in data.py) by FIELD_NAMES.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..data import FieldNames
from ..training.config import TrainConfig
from .flags import Flag, Group, check

# -- the model pair, the data and the targets ---------------------------------------------

BASE_MODEL = Flag(
    help="Base model: an HF folder, a cached hub id or a built-in name (smollm2-135m, tiny).",
    short="-b",
    aliases=("--base", "--model-name", "-m"),  # --model-name: the seed's name
)
TEACHER_MODEL = Flag(
    help="The fully fine-tuned model (the teacher) of the same base.",
    short="-t",
    aliases=("--tuned",),
)
TRAIN_DATA = Flag(
    help="Training rows, a JSON or JSONL file (default: the built-in set).",
    aliases=("--data-path",),  # the seed's name
)
EVAL_DATA = Flag(
    help="Held-out rows (default: the built-in eval set with the built-in train set).",
)
INCLUDE = Flag(
    help="Regex of tensor names to target (repeatable); replaces the default targets "
    "(q/k/v/o and the MLP projections).",
)
EXCLUDE = Flag(help="Regex of tensor names to leave out of the targets (repeatable).")
DTYPE_POLICY = Flag(
    help="When base and teacher dtypes differ: round (subtract against the base cast to "
    "the teacher's dtype, the grid the fine-tune started from) or raw (as stored).",
)
FIELD_NAMES = Group(
    FieldNames,
    {
        "prompt": Flag(help="Row key holding the prompt.", name="prompt_field"),
        "answer": Flag(help="Row key holding the answer.", name="answer_field"),
    },
)

# -- outputs and the cache ----------------------------------------------------------------

OUTPUT_DIR = Flag(
    help="Folder for this command's files (default: ./svdlora-out).",
    short="-o",
    type=Path,
    cli_default=None,  # the help says the default
)
CACHE_DIR = Flag(
    help="Artifact cache folder (default: ~/.cache/svdlora).",
    envvar="SVDLORA_CACHE_DIR",
)
CACHE_SIZE = Flag(
    help="Cap on cached payloads (e.g. 2GB); least recently used go first.",
    envvar="SVDLORA_CACHE_SIZE",
)
NO_CACHE = Flag(help="Neither read nor write the artifact cache.")

# -- the decomposition and the adapter ----------------------------------------------------

RANK = Flag(
    help="Rank r: the LoRA rank and the SVD truncation rank.",
    short="-r",
    aliases=("--lora-rank",),  # the seed's name
)
METHOD = Flag(help="SVD method: auto, exact or randomized.")
BATCH_SIZE = Flag(help="Examples per micro-batch.")
MAX_LENGTH = Flag(help="Tokens per example (longer rows are cut).")
DEVICE = Flag(help="Device: auto, cpu, cuda or cuda:N.")
PROBE = Flag(
    help="Compare the adapter's logits through PEFT with a direct merge of its factors.",
    switch=True,
)

# -- the students' grid -------------------------------------------------------------------


def init_help() -> str:
    """--init's help: the init registry's list of inits."""
    from ..training.init_registry import init_help as listed

    return listed()


def parse_inits(text: str) -> tuple[str, ...]:
    """`random,svd` -> ("random", "svd"), each a registered init."""
    from ..training.init_registry import parse_inits as registered

    return tuple(registered(text))


def parse_seeds(text: str) -> tuple[int, ...]:
    """`0,1,2` -> (0, 1, 2): distinct integers."""
    from ..errors import InvalidOptionError

    hint = "use e.g. --seeds 0,1,2"
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InvalidOptionError(f"--seeds {text!r} is not a list of integers", hint) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise InvalidOptionError(f"--seeds {text!r} must list distinct integers", hint)
    return seeds


def parse_learning_rates(text: str) -> tuple[float, ...]:
    """`1e-4,3e-4` -> (0.0001, 0.0003): distinct numbers (TrainOptions checks their range)."""
    from ..errors import InvalidOptionError

    hint = "use e.g. --learning-rates 1e-4,3e-4,1e-3"
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InvalidOptionError(
            f"--learning-rates {text!r} is not a list of numbers", hint
        ) from None
    if not values:
        raise InvalidOptionError("--learning-rates is empty", hint)
    if len(set(values)) != len(values):
        raise InvalidOptionError(f"--learning-rates {text!r} repeats a value", hint)
    return values


def parse_save_steps(text: str | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """`1,5,20` (or the svdlora.toml list [1, 5, 20]) -> (1, 5, 20): positive integers,
    sorted, each once."""
    from ..errors import InvalidOptionError

    hint = "use e.g. --save-steps 1,5,20 (optimizer steps after which to keep the weights)"
    parts = text if isinstance(text, (list, tuple)) else str(text).strip("[] ").split(",")
    try:
        steps = [int(str(part).strip()) for part in parts if str(part).strip()]
    except ValueError:
        raise InvalidOptionError(
            f"--save-steps {text!r} is not a list of whole numbers", hint
        ) from None
    if not steps or min(steps) < 1:
        raise InvalidOptionError(f"--save-steps {text!r} must list positive whole numbers", hint)
    return tuple(sorted(set(steps)))


def check_rank(rank: int) -> None:
    """A LoRA rank (train, demo): at least 1."""
    check(rank >= 1, f"--rank must be at least 1, got {rank}", "use e.g. --rank 16")


def check_learning_rate(lr: float) -> None:
    """A learning rate of a grid: positive and finite."""
    check(
        math.isfinite(lr) and lr > 0,
        f"--learning-rates must list positive finite numbers, got {lr:g}",
        "use e.g. --learning-rates 1e-4,3e-4,1e-3",
    )


# The `inits` field of a record is the option --init (a comma list, like PEFT's init name).
INIT = Flag(help=init_help, type=str, parse=parse_inits, name="init")
SEEDS = Flag(help="One run per seed, e.g. 0,1,2.", type=str, parse=parse_seeds)
LEARNING_RATES = Flag(
    help="A learning-rate grid, e.g. 1e-4,3e-4,1e-3: one run per (init, learning rate, "
    "seed); instead of --learning-rate (not with it). With --train-data, needs --eval-data.",
    type=str,
    parse=parse_learning_rates,
)
SAVE_STEPS = Flag(
    help="Keep the teacher's full weights after these optimizer steps, e.g. 1,5,20: each "
    "goes to checkpoints/step_K/, a model folder `svd` and `train --teacher-model` read "
    "(students from it are labelled svd@K).",
    type=str,
    parse=parse_save_steps,
)
EVAL_LIMIT = Flag(help="Use only the first N eval rows (default: all).")
GENERATE_LIMIT = Flag(help="Eval problems greedy-decoded for exact-match accuracy.")

# -- TrainConfig: the hyperparameters every arm shares (train-teacher, train, sweep) -------


def _precision(values: dict[str, Any]) -> dict[str, Any]:
    """--bf16 / --fp16 as TrainConfig's precision."""
    bf16, fp16 = values.pop("bf16", False), values.pop("fp16", False)
    check(not (bf16 and fp16), "--bf16 and --fp16 are exclusive", "pass one of them")
    if bf16 or fp16:
        values["precision"] = "bf16" if bf16 else "fp16"
    return values


TRAINING = Group(
    TrainConfig,
    {
        "epochs": Flag(help="Passes over the training set."),
        "learning_rate": Flag(help="AdamW learning rate."),
        "batch_size": BATCH_SIZE,
        "tokens_per_step": Flag(
            help="Size steps by real tokens instead of rows: each step takes rows in the "
            "seed's order until about N tokens, cut into --grad-accum micro-batches "
            "(replaces --batch-size; fills a GPU, e.g. 16384).",
        ),
        "grad_accum": Flag(help="Micro-batches per optimizer step."),
        "max_length": MAX_LENGTH,
        "seed": Flag(help="Seed of the batch order and of random inits."),
        "eval_every": Flag(help="Eval loss every N steps (0: at the start and the end)."),
        "eval_limit": EVAL_LIMIT,
        "max_steps": Flag(help="Stop after N optimizer steps."),
        "gradient_checkpointing": Flag(help="Trade compute for memory."),
        "packing": Flag(
            help="Lay each micro-batch's rows end to end (no padding; attention stays "
            "within each row). Checked against padded batches before training.",
            switch=True,
        ),
        "device": DEVICE,
        "warmup_steps": Flag(help="Linear LR warmup steps."),
        "lr_scheduler": Flag(help="linear, cosine or constant."),
        "weight_decay": Flag(help="AdamW weight decay."),
        "trust_remote_code": Flag(help="Allow models that ship their own Python code."),
        "save_every": Flag(help="Checkpoint every N steps (0: never) for --resume."),
        "resume": Flag(help="Continue from the last checkpoint of an interrupted run."),
    },
    extra={
        "bf16": (
            bool,
            False,
            Flag(
                help="bf16 mixed precision: students keep the frozen base in bf16 and their "
                "LoRA weights and optimizer state in fp32; the teacher keeps fp32 master "
                "weights.",
            ),
        ),
        "fp16": (bool, False, Flag(help="fp16 mixed precision (CUDA only).")),
    },
    fold=_precision,
    panel="Training options",
)
