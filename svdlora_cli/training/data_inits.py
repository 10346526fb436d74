"""Teacher-free, data-driven LoRA inits through PEFT: LoRA-GA, EVA and CorDA.

All three read the first INIT_BATCHES micro-batches of the arm's own training
schedule (the seed-fixed order `batch_schedule` gives every arm), before
training starts. The data is read for the init only: the schedule itself is
computed again from the seed by `fit`, so every arm of a seed trains on the same
batches in the same order, whatever its init. Their records (flags, PEFT options and
builders) are in init_registry.py.

- LoRA-GA (Wang et al. 2024, arXiv:2407.05000; `peft.preprocess_loraga`): G is
  the gradient of the mean answer-token loss over those batches with respect to
  each target W. With G = U S Vh and PEFT's default direction "ArB2r", A = Vh[:r]
  and B = U[:, r:2r] S[r:2r] times the "stable" factor out**0.25 / sqrt(16); the
  base keeps W - scale * B @ A, so the model starts at the base.
- EVA (Paischer et al. 2024, arXiv:2410.07170; `peft.initialize_lora_eva_weights`):
  A's rows are the top-r principal directions (PEFT's IncrementalPCA: centred
  inputs) of each target layer's inputs at answer-token positions; B = 0. rho = 1
  and no scaling adjustment, so every layer keeps the plan's rank and alpha.
- CorDA (Yang et al. 2024, arXiv:2406.05223; `peft...corda.preprocess_corda`, IPM):
  C is the mean over init rows of X^T X (X: one row's layer inputs over all its
  tokens, divided by max(X)), damped by 1% of its mean diagonal; with
  W C = U S Vh, s * B @ A = U_r S_r Vh_r C^-1 and the base keeps W minus that.
  PEFT's corda.py imports `attrs`, which peft does not declare: without it,
  `--init corda` is a user error.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from ..data import IGNORE_INDEX, collate
from ..errors import SvdloraError
from .init_start import InitStart
from .loss import loss_sum
from .schedule import batch_schedule

INIT_BATCHES = 4
EVA_MAX_PASSES = 50


class InitError(SvdloraError):
    """A data-driven init could not be computed from the init batches."""


def init_batches(
    n_examples: int, batch_size: int, seed: int, count: int = INIT_BATCHES
) -> list[tuple[int, ...]]:
    """The first `count` micro-batches training sees for this seed (into later epochs if needed)."""
    steps = batch_schedule(n_examples, batch_size, 1, count, seed)
    return [step.micro_batches[0] for step in steps][:count]


def _batch(indices: Sequence[int], start: InitStart, device: Any) -> dict[str, torch.Tensor]:
    """The init rows `indices` of the arm's training set, collated onto `device`."""
    return {k: v.to(device) for k, v in collate(indices, start.train, start.pad_id).items()}


def lora_ga_model(start: InitStart) -> Any:
    """The PEFT model with LoRA-GA factors from the gradient of the mean loss on the init
    batches."""
    from peft import get_peft_model, preprocess_loraga
    from peft.tuners.lora.loraga import get_target_modules

    base, peft_config, batches = start.base, start.peft_config, start.batches
    ranks = start.plan.ranks
    # LoRA-GA splits the top 2r singular directions of G between A and B.
    narrow = {m: r for m, r in ranks.items() if 2 * r > min(base.get_submodule(m).weight.shape)}
    if narrow:
        module, rank = next(iter(narrow.items()))
        width = min(base.get_submodule(module).weight.shape)
        raise InitError(
            f"--init lora-ga needs 2 x rank <= the smaller side of every target; "
            f"{module} is {width} wide at rank {rank}",
            f"lower --rank to {width // 2} or leave such modules out of --include",
        )
    device = next(base.parameters()).device
    total = sum(t != IGNORE_INDEX for b in batches for i in b for t in start.train.labels[i][1:])

    def train_step() -> None:
        # PEFT divides the accumulated .grad by the number of backward passes, so
        # each pass is scaled by len(batches) / total: the result is d(mean loss)/dW.
        for indices in batches:
            loss, _ = loss_sum(base, _batch(indices, start, device))
            with warnings.catch_warnings():
                # PEFT counts passes with full backward hooks; the first layer's input
                # needs no gradient, so torch warns that its hook fires on outputs.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                (loss * len(batches) / total).backward()

    preprocess_loraga(base, peft_config, train_step)
    missing = [
        name
        for name, module in get_target_modules(base, peft_config)
        if not hasattr(module, "_peft_loraga_grad")
    ]
    if missing:
        raise InitError(
            f"LoRA-GA got no gradient for {', '.join(missing[:3])}",
            "these modules do not reach the loss; leave them out of --include",
        )
    return get_peft_model(base, peft_config)


def eva_model(start: InitStart) -> Any:
    """The PEFT model with EVA's A (principal directions of each layer's inputs) and B = 0.

    The init batches go in as one batch, so the incremental PCA's first step is
    the PCA of every init token; it repeats that batch until PEFT's convergence
    test (cosine >= tau between passes) holds, at most EVA_MAX_PASSES times.
    """
    from peft import get_peft_model, initialize_lora_eva_weights
    from peft.tuners.lora.eva import get_eva_state_dict

    device = next(start.base.parameters()).device
    model = get_peft_model(start.base, start.peft_config, low_cpu_mem_usage=True)
    rows = [i for b in start.batches for i in b]
    loader = [_batch(rows, start, device)]
    passes = 0

    def forward(model: Any, inputs: dict[str, torch.Tensor]) -> Any:
        nonlocal passes
        passes += 1
        if passes > EVA_MAX_PASSES:
            raise InitError(
                f"EVA did not converge in {EVA_MAX_PASSES} passes over the init batches",
                "raise --batch-size (EVA needs at least r answer tokens) or lower --rank",
            )
        inputs = {k: inputs[k] for k in ("input_ids", "attention_mask")}
        return model(**inputs)

    state = get_eva_state_dict(
        model,
        loader,
        forward_fn=forward,
        gather_distributed_inputs=False,  # every process reads the same init batches
        show_progress_bar=False,
    )
    prefix = "base_model.model."
    for name, components in list(state.items()):
        rank = start.plan.ranks.get(name.removeprefix(prefix))
        if rank is not None and components.shape[0] != rank:
            if components.shape[0] < rank:
                raise InitError(
                    f"EVA found {components.shape[0]} directions for {name}, "
                    f"the plan has rank {rank}",
                    "raise --batch-size or lower --rank",
                )
            state[name] = components[:rank]
    initialize_lora_eva_weights(model, eva_state_dict=state, show_progress_bar=False)
    return model


def corda_model(start: InitStart) -> Any:
    """The PEFT model with CorDA's IPM factors from the input covariance on the init rows."""
    from peft import get_peft_model

    try:
        from peft.tuners.lora.corda import preprocess_corda  # not re-exported by peft
    except ModuleNotFoundError as exc:  # peft's corda.py imports attrs, not a peft dependency
        raise InitError(
            f"--init corda needs the package {exc.name!r}, which PEFT's CorDA code imports",
            "pip install attrs (or leave corda out of --init)",
        ) from exc

    base, peft_config = start.base, start.peft_config
    device = next(base.parameters()).device
    rows = [i for b in start.batches for i in b]

    def run_model() -> None:
        # PEFT's covariance hook takes one unpadded sequence per forward pass.
        for i in rows:
            batch = _batch([i], start, device)
            base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    preprocess_corda(base, peft_config, run_model=run_model)
    return get_peft_model(base, peft_config)
