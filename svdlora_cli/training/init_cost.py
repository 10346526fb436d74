"""FLOPs of a LoRA init, from the target shapes, the rank and the model passes it runs.

Every init record names its cost kind (`InitMethod.cost`); `init_flops` prices a kind for
given target shapes, and `arm_init_flops` reads those shapes and the init rows' passes off
a student arm. The convention is flops.py's (a multiply-add is 2 FLOPs; model FLOPs, not
hardware FLOPs; elementwise work counts 0), and the matrix formulas count flops the way
Golub and Van Loan do (each add and each multiply is one flop): for an m x n matrix with
m >= n, k = min(m, n),

- thin SVD (U_1, S, V): the cheaper of Golub-Kahan-Reinsch, 14mn^2 + 8n^3, and the
  R-SVD (QR first), 6mn^2 + 20n^3 (Golub and Van Loan, Matrix Computations, 4th ed.,
  2013, sec. 8.6.3, Figure 8.6.1; 3rd ed. Figure 5.4.1): LAPACK takes the QR route when
  m is well above n.
- Householder QR with the thin Q: 2k^2(max(m, n) - k/3) for R (Algorithm 5.2.1) and
  2k^2(m - k/3) more to accumulate Q_1 (m x k) backwards (sec. 5.1.6).
- the inverse of an n x n matrix: 2n^3 (LU with partial pivoting 2n^3/3, then the
  inverse from the factors 4n^3/3; sec. 3.2 and 3.4).
- torch.svd_lowrank(A, q, niter) (Halko, Martinsson and Tropp 2011, "Finding structure
  with randomness", Algorithms 4.4 and 5.1, as torch/_lowrank.py runs them): 2mnq for each
  of the 2 + 2 niter products with A, niter + 1 QRs of m x q and niter of n x q, the thin
  SVD of the q x n projection and 2mq^2 to map U back.
- a product of (a x b) by (b x c): 2abc.

What each kind costs per target W of shape (out, in) = (m, n) at rank r, over the T real
tokens of the init rows:

- none (random, gaussian): 0.
- delta-svd (svd, svd-sqrt, subspace: the teacher's factors): the thin SVD of dW. An
  upper bound when `svd` took its randomized, certified path; the teacher's own training
  is the separate `teacher` part of compare's accounting.
- weight-svd (pissa): the thin SVD of W, and 2mnr for the residual W - s B A.
- weight-qr (olora): the QR of W, and 2mnr for the residual.
- gradient-svd (lora-one): one forward and backward pass over the init rows with weight
  gradients for the targets only (flops.py: 4 per weight and token for the frozen
  ones, 2 more per target weight, the head where the loss takes logits), then the thin
  SVD of each gradient.
- gradient-lowrank-svd (lora-ga): the same pass, torch.svd_lowrank of each gradient with
  q = min(4r, k), niter = 4 (PEFT's lora_ga_init), and 2mnr for the residual.
- forward-pca (eva): `forward_passes` forward passes over the init rows (logits at every
  position; PEFT runs one to find layers with equal inputs, then one per incremental-PCA
  step until the components converge, at least 2), and per PCA step and target
  torch.svd_lowrank of the (T + r + 1) x n inputs with q = 2r, niter = 4. Targets that
  share their inputs are priced each (PEFT decomposes one of them): an upper bound.
- forward-covariance (corda): one forward pass per init row (logits at every position),
  X^T X per target (2n^2 T), the damped covariance's inverse (2n^3) and its check
  C C^-1 (2n^3), W C (2mn^2), the thin SVD of W C, Vh C^-1 (2kn^2) and the residual
  (2mnr).

Under DDP every process computes the same init; it is counted once (the work the init
needs, as flops.py counts the work training needs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..data import TokenizedSet
    from .init_registry import InitMethod
    from .inits import LoraPlan

COSTS = (
    "none",
    "delta-svd",
    "weight-svd",
    "weight-qr",
    "gradient-svd",
    "gradient-lowrank-svd",
    "forward-pca",
    "forward-covariance",
)
LOWRANK_NITER = 4  # PEFT's niter for LoRA-GA's and EVA's torch.svd_lowrank
EVA_MIN_PASSES = 3  # one to find equal inputs, two PCA steps before convergence can hold

Shape = tuple[int, int]  # (out, in) of a target weight


def thin_svd_flops(m: int, n: int) -> float:
    """U_1, S and V of an m x n matrix (either orientation): the cheaper GVL algorithm."""
    m, n = max(m, n), min(m, n)
    return float(min(14 * m * n**2 + 8 * n**3, 6 * m * n**2 + 20 * n**3))


def qr_flops(m: int, n: int) -> float:
    """Householder QR of an m x n matrix, R and the thin Q (m x min(m, n))."""
    k = min(m, n)
    return 2 * k**2 * (max(m, n) - k / 3) + 2 * k**2 * (m - k / 3)


def inverse_flops(n: int) -> float:
    """The inverse of an n x n matrix through its LU factors."""
    return 2.0 * n**3


def lowrank_svd_flops(m: int, n: int, q: int, niter: int = LOWRANK_NITER) -> float:
    """torch.svd_lowrank(A, q, niter) of an m x n A (transposed first when m < n)."""
    m, n = max(m, n), min(m, n)
    products = (2 + 2 * niter) * 2 * m * n * q
    bases = (niter + 1) * qr_flops(m, q) + niter * qr_flops(n, q)
    return products + bases + thin_svd_flops(q, n) + 2 * m * q**2


@dataclass(frozen=True)
class InitPasses:
    """FLOPs of the model passes an init runs over its rows, and their real tokens."""

    gradient: float = 0.0  # forward + backward, weight gradients for the targets only
    forward: float = 0.0  # one forward pass over all the init rows
    tokens: int = 0


def _per_target(kind: str, m: int, n: int, r: int, tokens: int) -> tuple[float, float]:
    """(decomposition, products) FLOPs of one target of shape (m, n) = (out, in)."""
    k = min(m, n)
    residual = 2.0 * m * n * r
    if kind == "delta-svd" or kind == "gradient-svd":
        return thin_svd_flops(m, n), 0.0
    if kind == "weight-svd":
        return thin_svd_flops(m, n), residual
    if kind == "weight-qr":
        return qr_flops(m, n), residual
    if kind == "gradient-lowrank-svd":
        return lowrank_svd_flops(m, n, min(4 * r, k)), residual
    if kind == "forward-pca":
        return lowrank_svd_flops(tokens + r + 1, n, min(2 * r, n, tokens + r + 1)), 0.0
    if kind == "forward-covariance":
        decomposition = inverse_flops(n) + thin_svd_flops(m, n)
        products = 2.0 * n**2 * tokens + 2.0 * n**3 + 2.0 * m * n**2 + 2.0 * k * n**2
        return decomposition, products + residual
    return 0.0, 0.0


def init_flops(
    kind: str,
    shapes: Mapping[str, Shape],
    ranks: Mapping[str, int],
    passes: InitPasses = InitPasses(),
    forward_passes: int = 1,
) -> dict[str, Any]:
    """{kind, passes, decomposition, products, total} FLOPs of an init of cost `kind` over
    targets of these (out, in) shapes and ranks (the module docstring gives each formula).
    `forward_passes` counts EVA's passes over the init rows (the other kinds run one)."""
    if kind not in COSTS:
        raise ValueError(f"unknown init cost {kind!r}; known: {', '.join(COSTS)}")
    decomposition = products = 0.0
    pca_steps = max(forward_passes - 1, 0)
    for module, (m, n) in shapes.items():
        d, p = _per_target(kind, int(m), int(n), int(ranks[module]), passes.tokens)
        steps = pca_steps if kind == "forward-pca" else 1
        decomposition, products = decomposition + steps * d, products + p
    model = {
        "gradient-svd": passes.gradient,
        "gradient-lowrank-svd": passes.gradient,
        "forward-pca": forward_passes * passes.forward,
        "forward-covariance": passes.forward,
    }.get(kind, 0.0)
    doc: dict[str, Any] = {
        "kind": kind,
        "passes": float(model),
        "decomposition": float(decomposition),
        "products": float(products),
        "total": float(model + decomposition + products),
    }
    if kind == "forward-pca":
        doc["forward_passes"] = forward_passes
    return doc


def target_shapes(model: Any, plan: LoraPlan) -> dict[str, Shape]:
    """(out, in) of every target of the plan in `model` (the base or its PEFT model)."""
    from .flops import linear_shapes

    return linear_shapes(model, plan.ranks)


def init_passes(
    model: Any,
    shapes: Mapping[str, Shape],
    train: TokenizedSet,
    batches: Sequence[Sequence[int]],
    pad_id: int,
) -> InitPasses:
    """The model FLOPs of the passes over the init rows `batches` of `train`: the gradient
    pass per micro-batch as the data inits run it (`loss_sum`: logits where answers are),
    and a forward pass with logits at every real position (EVA, CorDA: no labels)."""
    from ..data import collate
    from .flops import ModelFlops
    from .loss import with_targets
    from .packing import logit_count, row_lengths

    base = ModelFlops.from_model(model, adapters=False)
    frozen = dataclasses.replace(
        base,
        weights=tuple(dataclasses.replace(w, trainable=False) for w in base.weights),
        head=tuple(dataclasses.replace(w, trainable=False) for w in base.head),
    )
    gradient, tokens, lengths = 0.0, 0, []
    for indices in batches:
        batch = with_targets(collate(list(indices), train, pad_id))
        rows = row_lengths(batch)
        gradient += frozen.micro_batch(rows, logit_count(batch))
        tokens += sum(rows)
        lengths += rows
    gradient += sum(2.0 * m * n for m, n in shapes.values()) * tokens  # the targets' dL/dW
    return InitPasses(gradient, frozen.forward(lengths, tokens), tokens)


def arm_init_flops(
    method: InitMethod,
    model: Any,
    plan: LoraPlan,
    train: TokenizedSet | None = None,
    batches: Sequence[Sequence[int]] = (),
    pad_id: int = 0,
    forward_passes: int | None = None,
) -> dict[str, Any]:
    """`init_flops` of one student arm: `method`'s cost kind over the plan's targets in
    `model` (its PEFT model at the start, or the base) and, for the data-driven inits, the
    init rows `batches` of `train` (`data_inits.init_batches`). `forward_passes`: EVA's
    count when known; without it EVA_MIN_PASSES, marked `"lower_bound": True`."""
    kind = method.cost
    shapes = target_shapes(model, plan)
    passes = InitPasses()
    if kind in ("gradient-svd", "gradient-lowrank-svd", "forward-pca", "forward-covariance"):
        if train is None or not batches:
            raise ValueError(f"init cost {kind} needs the training rows and the init batches")
        passes = init_passes(model, shapes, train, batches, pad_id)
    doc = init_flops(kind, shapes, plan.ranks, passes, forward_passes or EVA_MIN_PASSES)
    if kind == "forward-pca" and forward_passes is None:
        doc["lower_bound"] = True
    return doc
