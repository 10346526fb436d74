"""The init registry: one record per LoRA initialisation, in the manner of PEFT's
`register_peft_method`.

A record (`InitMethod`) says everything the package asks about an init: its help line,
whether it reads the teacher's SVD factors or the training data, whether it rewrites the
base weights, what its start depends on, and how it is built: by PEFT from its
`init_lora_weights` value alone, or by our builder. `train`, the CLI help, `compare` and
the protocol read these records; no other module lists init names.

Adding an init is one `register_init(InitMethod(...))` at the end of this file, its
builder beside it, and one test. A builder takes an `InitStart` (torch is already seeded
with the arm's seed) and returns the PEFT model at its start; `FromFactors(rule)` is the
builder of the SVD family.

With scale s = alpha / r, PEFT computes W' = W + s * B @ A. The SVD inits set s * B @ A to
the teacher's rank-r truncation U_r S_r Vh_r, so the student starts at base + best rank-r
approximation of dW whatever alpha is. Teacher-free baselines see only the base and the
data: `olora` (Buyukakyuz 2024, arXiv:2406.01775: Q, R = qr(W), B = Q[:, :r], A = R[:r]),
`pissa` (top-r SVD of W), and the data-driven `lora-ga`, `eva` and `corda` (data_inits.py)
and `lora-one` (lora_one.py).

This module imports no ML stack (the CLI help lists the inits); builders import it when run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InvalidOptionError
from .init_start import InitStart

if TYPE_CHECKING:
    import torch

    from .inits import LoraPlan

# The init the experiment asks about (the protocol's focus), and the standard LoRA that
# every other init is measured against (its step 0 is the base's loss).
FOCUS_INIT = "svd"
REFERENCE_INIT = "random"


Builder = Callable[[InitStart], Any]
# (B0, A0, S, scale) -> (B, A): B0 = U_r S_r, A0 = Vh_r and S = S_r of the teacher's dW, fp32.
FactorRule = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor", float], tuple[Any, Any]]


@dataclass(frozen=True)
class FromFactors:
    """The SVD family's builder: PEFT's default LoRA, then every layer's (B, A) from the
    teacher's factors by `rule` (the svd-factor path, `inits.apply_factor_init`)."""

    rule: FactorRule

    def __call__(self, start: InitStart) -> Any:
        from peft import get_peft_model

        from .inits import apply_factor_init

        if start.factors is None:
            raise InvalidOptionError(
                "the SVD inits need the teacher's factors", "pass --svd-factors or --teacher-model"
            )
        model = get_peft_model(start.base, start.peft_config)
        apply_factor_init(model, start.plan, self.rule, start.factors)
        return model


@dataclass(frozen=True)
class InitMethod:
    """One LoRA init: what it needs, what it changes, and how it is built."""

    name: str
    help: str  # one line for `train --help`
    init_lora_weights: bool | str = True  # PEFT's value: its start, and the saved config's
    build: Builder | None = None  # our start; None: PEFT's, from `init_lora_weights`
    needs_teacher: bool = False  # reads the teacher's SVD factors (build is FromFactors)
    needs_data: bool = False  # reads the first INIT_BATCHES micro-batches of the seed's order
    rewrites_base: bool = False  # moves s * B0 @ A0 out of the base weight (W - s B0 A0)
    base_start: bool = False  # B0 = 0: exactly the base at step 0, whatever the seed draws
    seedless: bool = False  # a function of the weights (and factors): one start for all seeds
    costly: bool = False  # a seedless start worth computing once per process and reusing
    peft_options: Callable[[], dict[str, Any]] | None = None  # more LoraConfig fields
    conv1d: bool = True  # PEFT can apply it to Conv1D (GPT-2 style) weights
    cost: str = "none"  # how its FLOPs are counted: a kind of init_cost.py (COSTS)

    def lora_config(self, plan: LoraPlan, dropout: float = 0.0) -> Any:
        """PEFT's LoraConfig for an arm of this init on the shared plan."""
        from .inits import lora_config

        if plan.fan_in_fan_out and not self.conv1d:
            raise InvalidOptionError(
                f"--init {self.name} does not support Conv1D (GPT-2 style) weights in PEFT",
                f"use another init for this model, e.g. {REFERENCE_INIT}",
            )
        extra = self.peft_options() if self.peft_options else {}
        return lora_config(plan, self.init_lora_weights, dropout, **extra)


INITS: dict[str, InitMethod] = {}


def problems(method: InitMethod) -> list[str]:
    """What makes a record inconsistent (empty when it is sound)."""
    m = method
    rules = (
        (re.fullmatch(r"[a-z0-9][a-z0-9-]*", m.name), "the name may hold only a-z, 0-9 and '-'"),
        (m.help.strip() and "\n" not in m.help, "the help must be one line"),
        (m.needs_teacher == isinstance(m.build, FromFactors), "needs_teacher iff FromFactors"),
        (m.build is not None or not m.needs_data, "needs_data needs a builder"),
        (not (m.needs_data and m.seedless), "needs_data cannot be seedless (batches follow it)"),
        (m.seedless or not m.costly, "costly needs seedless (one start serves every seed)"),
        (
            isinstance(m.init_lora_weights, str) or not m.rewrites_base,
            "rewrites_base needs PEFT's init name (PEFT converts the saved adapter by it)",
        ),
    )
    return [f"init {m.name!r}: {what}" for ok, what in rules if not ok]


def register_init(method: InitMethod, replace: bool = False) -> InitMethod:
    """Add `method` to the registry (after the others: the help lists it last)."""
    if method.name in INITS and not replace:
        raise ValueError(f"an init named {method.name!r} is already registered")
    wrong = problems(method)
    if wrong:
        raise ValueError("; ".join(wrong))
    INITS[method.name] = method
    return method


def unregister_init(name: str) -> InitMethod:
    """Take an init out of the registry (a test's toy init, say); returns its record."""
    return INITS.pop(name)


def get_init(name: str) -> InitMethod:
    """The record of `name`; an InvalidOptionError listing the registered names if none."""
    if name not in INITS:
        raise InvalidOptionError(f"unknown --init {name}", _choices())
    return INITS[name]


def init_names(**flags: Any) -> tuple[str, ...]:
    """The registered names (in order) whose records have these field values, e.g.
    `init_names(needs_teacher=True)`."""
    return tuple(
        name
        for name, method in INITS.items()
        if all(getattr(method, key) == value for key, value in flags.items())
    )


def flagged(name: str, flag: str) -> bool:
    """Whether `name` is registered with `flag` set; False for unknown names (old runs)."""
    return name in INITS and bool(getattr(INITS[name], flag))


def parse_inits(text: str) -> list[str]:
    """`random,svd` -> ["random", "svd"], each a registered init."""
    inits = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [i for i in inits if i not in INITS]
    if not inits or unknown:
        raise InvalidOptionError(f"unknown --init {', '.join(unknown) or repr(text)}", _choices())
    return inits


def _choices() -> str:
    return f"use one or more of: {', '.join(INITS)}"


def init_help() -> str:
    """The help of `--init`: every registered init and its line, then what the kinds need."""
    listed = "; ".join(f"{m.name}: {m.help}" for m in INITS.values())
    kinds = (
        ("needs_teacher", "Need --svd-factors or --teacher-model"),
        ("needs_data", "Read the first training micro-batches of the seed's order"),
        ("rewrites_base", "Saved as plain rank-2r LoRAs on the untouched base"),
    )
    notes = [
        f"{text}: {', '.join(names)}."
        for flag, text in kinds
        if (names := init_names(**{flag: True}))
    ]
    return " ".join([f"A comma list of: {listed}.", *notes])


# The built-in inits: their builders, then their records.


def svd_rule(B: torch.Tensor, A: torch.Tensor, S: torch.Tensor, scale: float) -> tuple[Any, Any]:
    """s * B @ A = U_r S_r Vh_r."""
    return B / scale, A.clone()


def svd_sqrt_rule(
    B: torch.Tensor, A: torch.Tensor, S: torch.Tensor, scale: float
) -> tuple[Any, Any]:
    """The same product, balanced: U_r sqrt(S_r) and sqrt(S_r) Vh_r (zero S: zero columns)."""
    import torch

    root = S.sqrt()
    safe = torch.where(root > 0, root, torch.ones_like(root))
    half = torch.where(root > 0, B / safe, torch.zeros_like(B))
    return half / scale**0.5, root[:, None] * A / scale**0.5


def subspace_rule(
    B: torch.Tensor, A: torch.Tensor, S: torch.Tensor, scale: float
) -> tuple[Any, Any]:
    """A = Vh_r, B = 0: the teacher's directions, no head start."""
    return B.new_zeros(B.shape), A.clone()


def _lora_ga(start: InitStart) -> Any:
    from .data_inits import lora_ga_model

    return lora_ga_model(start)


def _lora_one(start: InitStart) -> Any:
    from .lora_one import lora_one_model

    return lora_one_model(start)


def _eva(start: InitStart) -> Any:
    from .data_inits import eva_model

    return eva_model(start)


def _corda(start: InitStart) -> Any:
    from .data_inits import corda_model

    return corda_model(start)


def _lora_ga_options() -> dict[str, Any]:
    from peft import LoraGAConfig

    return {"lora_ga_config": LoraGAConfig()}  # direction ArB2r, "stable" scale


def _eva_options() -> dict[str, Any]:
    from peft import EvaConfig

    # rho = 1: no rank redistribution, so EVA keeps the plan's ranks and alpha.
    return {"eva_config": EvaConfig(rho=1.0, adjust_scaling_factors=False)}


def _corda_options() -> dict[str, Any]:
    from peft.tuners.lora.config import CordaConfig  # not re-exported by peft

    return {"corda_config": CordaConfig(corda_method="ipm")}  # task-context directions


for _method in (
    InitMethod("random", "PEFT's default, kaiming A and B = 0", base_start=True),
    InitMethod(
        "gaussian", "PEFT's gaussian A and B = 0", init_lora_weights="gaussian", base_start=True
    ),
    InitMethod(
        "svd",
        "B = U_r S_r, A = Vh_r of the teacher's dW: starts at base + its rank-r part",
        build=FromFactors(svd_rule),
        needs_teacher=True,
        seedless=True,
        cost="delta-svd",
    ),
    InitMethod(
        "svd-sqrt",
        "the svd start with sqrt(S_r) on both factors",
        build=FromFactors(svd_sqrt_rule),
        needs_teacher=True,
        seedless=True,
        cost="delta-svd",
    ),
    InitMethod(
        "subspace",
        "A = Vh_r, B = 0: the teacher's directions, starting at the base",
        build=FromFactors(subspace_rule),
        needs_teacher=True,
        base_start=True,
        cost="delta-svd",
    ),
    InitMethod(
        "pissa",
        "PEFT's PiSSA, the top-r SVD of W itself",
        init_lora_weights="pissa",
        rewrites_base=True,
        seedless=True,
        costly=True,
        cost="weight-svd",
    ),
    InitMethod(
        "olora",
        "PEFT's OLoRA, the QR of W (no Conv1D weights)",
        init_lora_weights="olora",
        rewrites_base=True,
        seedless=True,
        costly=True,
        conv1d=False,
        cost="weight-qr",
    ),
    InitMethod(
        "lora-ga",
        "PEFT's LoRA-GA, the SVD of the loss gradient (needs 2 x rank <= every target's "
        "smaller side)",
        init_lora_weights="lora_ga",
        build=_lora_ga,
        needs_data=True,
        rewrites_base=True,
        peft_options=_lora_ga_options,
        cost="gradient-lowrank-svd",
    ),
    InitMethod(
        "lora-one",
        "LoRA-One, the SVD of the one-step full gradient: starts one normalised rank-r "
        "gradient step from the base",
        build=_lora_one,
        needs_data=True,
        cost="gradient-svd",
    ),
    InitMethod(
        "eva",
        "PEFT's EVA, the PCA of each layer's inputs, B = 0",
        init_lora_weights="eva",
        build=_eva,
        needs_data=True,
        peft_options=_eva_options,
        cost="forward-pca",
    ),
    InitMethod(
        "corda",
        "PEFT's CorDA (IPM) from the input covariance (needs the attrs package)",
        init_lora_weights="corda",
        build=_corda,
        needs_data=True,
        rewrites_base=True,
        peft_options=_corda_options,
        cost="forward-covariance",
    ),
):
    register_init(_method)
del _method
