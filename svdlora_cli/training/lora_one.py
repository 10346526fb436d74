"""LoRA-One (Zhang, Liu and Chen, ICML 2025, arXiv:2502.01235): the LoRA starts at one
normalised, best rank-r step of full fine-tuning's gradient.

What the reference code (github.com/YuanheZ/LoRA-One, run_exp.py at 01bba05) does:

- `estimate_gradient`: the full model's gradient of the HF causal-LM loss (mean over a
  batch's answer tokens), averaged over bsz x iters = 1 x 8 rows taken from the head of
  the training set (conf/init/gradient.yaml), in the model's bf16.
- `reinit_lora_modules` (mode "gradient", direction "LoRA-One"): U, S, V = svd_lowrank(-G,
  q=512, niter=16); B = U_r sqrt(S_r) / sqrt(S_0), A = sqrt(S_r) Vh_r / sqrt(S_0), both
  divided by sqrt(gamma) ("stable" scale, stable_gamma = 128). The base weight is left as
  it is (no W - s B A), and the adapter is saved plainly.
- The README's runs use PEFT's rsLoRA with lora_alpha = 16, so the start is
  W + (16 / sqrt(r)) B A = W - eta U_r S_r Vh_r / S_0 with eta = 16 / (128 sqrt(r)):
  a gradient step with spectral norm eta, whatever the gradient's size.

What we do: the same start, on the plan's scale. Every arm shares the plan's alpha (PEFT
scale s = alpha / r, not rsLoRA), so B and A keep the reference's balanced form and carry
sqrt(eta / s) each: s * B @ A = eta * U_r S_r Vh_r / S_0, the reference's update, with
eta = LORA_ONE_ALPHA / (LORA_ONE_GAMMA * sqrt(r)) and r the module's rank. The factors
themselves are sqrt(s_ref / s) times the reference's (equal when s = 16 / sqrt(r)).
Choices where the reference or paper leaves room (or differs from our pipeline):

- the data: the first INIT_BATCHES micro-batches of the seed's order (as LoRA-GA, EVA
  and CorDA), and the gradient of the mean answer-token loss over all their tokens (as
  training); the reference weights each of its 8 rows equally. The scale of G cancels
  (the step is divided by S_0); only the weighting of the tokens matters.
- the gradient is taken in eval mode (no dropout: a function of the weights and data),
  accumulated in float32 per target weight; only the targets get gradients.
- the SVD is exact (torch.linalg.svd in float32), the value svd_lowrank approximates.
- the README's formula has no 1/S_0 and puts S (not sqrt S) in the factors; the code
  divides by S_0, and we follow the code.
- a GPT-2 Conv1D weight is stored (in, out): its gradient is transposed to (out, in).

The cost: one forward and backward pass over the init rows, `lora_one_gradient_pass`
(`lora_one_gradient_tokens` for the real tokens alone).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..data import IGNORE_INDEX
from .data_inits import InitError, _batch
from .init_start import InitStart
from .loss import loss_sum

LORA_ONE_ALPHA = 16.0  # the reference's lora_alpha, with use_rslora (README's runs)
LORA_ONE_GAMMA = 128.0  # the reference's stable_gamma (conf/init/gradient.yaml)


@dataclass(frozen=True)
class GradientPass:
    """What the init's one forward and backward pass reads: each init row's real (unpadded)
    length, and how many answer tokens the loss scores."""

    row_lengths: tuple[int, ...]
    answer_tokens: int

    @property
    def tokens(self) -> int:
        return sum(self.row_lengths)


def lora_one_gradient_pass(start: InitStart) -> GradientPass:
    """The rows and answer tokens of LoRA-One's gradient pass over `start.batches`."""
    if start.train is None:
        raise InitError("--init lora-one needs the training rows", "report this as a bug")
    train = start.train
    rows = [i for b in start.batches for i in b]
    answers = sum(t != IGNORE_INDEX for i in rows for t in train.labels[i][1:])
    return GradientPass(tuple(len(train.input_ids[i]) for i in rows), answers)


def lora_one_gradient_tokens(start: InitStart) -> int:
    """The real tokens that go through LoRA-One's gradient pass (forward and backward)."""
    return lora_one_gradient_pass(start).tokens


def lora_one_step(rank: int) -> float:
    """The reference's step: the spectral norm of its start's update at rank `rank`."""
    return LORA_ONE_ALPHA / (LORA_ONE_GAMMA * rank**0.5)


def lora_one_factors(
    gradient: torch.Tensor, rank: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) with scale * B @ A = step * U_r S_r Vh_r / S_0, for U S Vh = -gradient (out, in);
    sqrt(S_r / S_0) on both sides, as the reference. Float32."""
    U, S, Vh = torch.linalg.svd(-gradient.float(), full_matrices=False)
    top = S[0]
    if not torch.isfinite(top) or top <= 0:
        raise InitError(
            f"LoRA-One got a {'zero' if top == 0 else 'non-finite'} gradient",
            "check the init batches' loss, or leave modules that do not reach it out of --include",
        )
    root = (S[:rank] / top).sqrt() * (lora_one_step(rank) / scale) ** 0.5
    return U[:, :rank] * root, root[:, None] * Vh[:rank]


def mean_loss_gradients(start: InitStart) -> dict[str, torch.Tensor]:
    """d(mean answer-token loss over the init batches)/dW for every target W, in float32
    and (out, in) orientation, on the base's device. Only the targets require gradients;
    each backward adds into a float32 sum and drops the weight's .grad at once."""
    base, plan = start.base, start.plan
    pass_ = lora_one_gradient_pass(start)
    if pass_.answer_tokens == 0:
        raise InitError("the init batches hold no answer token", "check the training data")
    weights = {m: base.get_submodule(m).weight for m in plan.ranks}
    sums = {
        m: torch.zeros(w.shape, dtype=torch.float32, device=w.device) for m, w in weights.items()
    }
    seen: set[str] = set()

    def keep(module: str) -> Any:
        def hook(param: torch.Tensor) -> None:
            sums[module].add_(param.grad.float())
            param.grad = None
            seen.add(module)

        return hook

    flags = {p: p.requires_grad for p in base.parameters()}
    training = base.training
    hooks = []
    try:
        for p in flags:
            p.requires_grad_(False)
        for module, w in weights.items():
            w.grad = None
            w.requires_grad_(True)
            hooks.append(w.register_post_accumulate_grad_hook(keep(module)))
        base.eval()
        device = next(base.parameters()).device
        for indices in start.batches:
            loss, _ = loss_sum(base, _batch(indices, start, device))
            (loss / pass_.answer_tokens).backward()
    finally:
        for h in hooks:
            h.remove()
        for w in weights.values():
            w.grad = None
        for p, flag in flags.items():
            p.requires_grad_(flag)
        base.train(training)
    missing = [m for m in weights if m not in seen]
    if missing:
        raise InitError(
            f"LoRA-One got no gradient for {', '.join(missing[:3])}",
            "these modules do not reach the loss; leave them out of --include",
        )
    if plan.fan_in_fan_out:  # Conv1D stores (in, out); PEFT's B @ A is (out, in)
        return {m: g.T for m, g in sums.items()}
    return sums


@torch.no_grad()
def write_factors(
    model: Any, factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]], adapter: str = "default"
) -> None:
    """Copy each module's (B, A) into the PEFT model's LoRA layer."""
    for module, (B, A) in factors.items():
        layer = model.base_model.model.get_submodule(module)
        lora_A, lora_B = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        lora_A.copy_(A.to(lora_A.device, lora_A.dtype))
        lora_B.copy_(B.to(lora_B.device, lora_B.dtype))


def lora_one_model(start: InitStart) -> Any:
    """The PEFT model at LoRA-One's start: the base untouched, s * B @ A the normalised
    rank-r step against the init batches' gradient (the module docstring)."""
    from peft import get_peft_model

    gradients = mean_loss_gradients(start)
    scale = start.plan.scale
    factors = {}
    for module in list(gradients):
        try:
            factors[module] = lora_one_factors(
                gradients.pop(module), start.plan.ranks[module], scale
            )
        except InitError as error:
            raise InitError(f"{error.message} for {module}", error.hint) from error
    model = get_peft_model(start.base, start.peft_config)
    write_factors(model, factors)
    return model
