"""Steps 3 and 4 of the seed plan: LoRA students from random, SVD, control and baseline inits."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..adapters.factors import LowRankFactors, load_factors
from ..data import FieldNames, check_token_ids, prepare_data
from ..errors import InvalidOptionError, ModelMismatchError
from ..files import atomic_dir, ensure_writable_dir, write_run_config
from ..models.checkpoints import Checkpoint, fingerprint, open_checkpoint
from ..models.loading import load_model
from ..store.cache import ArtifactCache, content_key
from .accelerator import make_accelerator, storage_dtype
from .arm import ArmRun
from .config import TrainConfig
from .data_inits import INIT_BATCHES, init_batches
from .init_cost import arm_init_flops
from .init_registry import InitStart, get_init
from .inits import LoraPlan, check_factors_fit, check_plan, plan_lora
from .loop import StepProgress
from .records import (
    arm_summary,
    reuse_or_key,
    save_hyperparameters,
    write_run_files,
)
from .shared import SharedSetup
from .teacher_checkpoints import teacher_fields, teacher_identity


def svd_factors_for(
    base_model: str,
    rank: int,
    cache: ArtifactCache,
    svd_factors: str | None = None,
    teacher_model: str | None = None,
    target_modules: Sequence[str] = (),
    allow_other_base: bool = False,
    warnings: list[str] | None = None,
) -> dict[str, LowRankFactors]:
    """Factors from a `svd` file, or from the teacher's dW through the cache.

    A file must fit this base (every module, every shape) and come from it (its recorded
    base fingerprint), unless `allow_other_base`, which lets only the weights differ.
    What `svd` would warn about (dW = 0, ranks clamped, ...) is appended to `warnings`.
    """
    from ..spectra.truncation import zero_delta_warning

    notes = warnings if warnings is not None else []
    if svd_factors:
        factors = load_factors(svd_factors)
        base = open_checkpoint(base_model)
        check_factors_fit(base, factors, svd_factors, complete=True)
        notes.extend(check_factor_base(svd_factors, base_model, base, cache, allow_other_base))
        zero = [m for m, f in factors.items() if not bool(f.S.any())]
        if zero:
            notes.append(zero_delta_warning(zero))
        return factors
    if teacher_model:
        from ..spectra.svd_step import run_svd

        result = run_svd(base_model, teacher_model, cache, rank=rank, include=target_modules)
        notes.extend(result.warnings)
        return result.factors("b")
    raise InvalidOptionError(
        "the SVD inits need the teacher's decomposition",
        "pass --svd-factors FILE (from `svdlora svd`) or --teacher-model T",
    )


def check_factor_base(
    path: str, base_model: str, base: Checkpoint, cache: ArtifactCache, allow_other_base: bool
) -> list[str]:
    """Compare the base fingerprint a factors file records with this base's: a
    ModelMismatchError when they differ (a warning with `allow_other_base`), and a
    warning when the file records none (an older file, or `svd --no-cache`)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    recorded = meta.get("base_fingerprint", "")
    if not recorded:
        return [
            f"{path} records no base fingerprint (an older file, or written by "
            f"`svd --no-cache`): cannot check that it was made from {base_model}"
        ]
    current = fingerprint(base, cache.memo)
    if recorded == current:
        return []
    made_from = meta.get("base_model") or "an unrecorded base"
    message = (
        f"the SVD factors {path} were made from base {made_from} (fingerprint "
        f"{recorded[:12]}), not from {base_model} (fingerprint {current[:12]})"
    )
    if allow_other_base:
        return [f"{message}; --allow-other-base uses them anyway"]
    remedy = (
        "recompute them with `svdlora svd --base-model " + base_model + "`"
        if made_from == base_model
        else f"pass --base-model {made_from} (the base the factors were made from)"
    )
    raise ModelMismatchError(message, f"{remedy}, or --allow-other-base to use them anyway")


# The settings that shape a run's step-0 losses besides its starting weights and batches.
START_SETTINGS = ("max_length", "precision", "packing", "device", "trust_remote_code")


def train_student(
    base_model: str,
    init: str,
    output_dir: Path,
    config: TrainConfig,
    plan: LoraPlan,
    factors: Mapping[str, LowRankFactors] | None = None,
    name: str | None = None,
    data_path: str | None = None,
    eval_path: str | None = None,
    fields: FieldNames = FieldNames(),
    dropout: float = 0.0,
    progress: StepProgress | None = None,
    reuse: bool = False,
    memo: Any = None,
    shared: SharedSetup | None = None,
    teacher: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one LoRA arm; write final_model_{name}/ (a PEFT adapter) and its step log.

    With `reuse`, a finished arm in `output_dir` with the same inputs is returned as is.
    `shared` lends the base model, tokenizer and step-0 rows of the other runs of a grid.
    `teacher`: the checkpoint marker of the teacher the factors came from (teacher_checkpoints
    .py); an SVD init read from a non-final one is the arm `svd@<step>` (the default name).
    """
    config.validate()
    method = get_init(init)
    labels = teacher_fields(init, teacher)
    name = name or labels["init_label"]
    if method.needs_teacher and factors is None:
        raise InvalidOptionError(
            f"--init {init} needs SVD factors", "pass --svd-factors or --teacher-model"
        )
    shared = shared or SharedSetup(base_model, config.trust_remote_code)
    tokenizer = shared.tokenizer()
    data = prepare_data(tokenizer, data_path, eval_path, config.max_length, fields)
    identity = {
        "init": init,
        "ranks": plan.ranks,
        "alpha": plan.alpha,
        "dropout": dropout,
        "factors": factors_digest(factors) if method.needs_teacher else None,
        **({"init_batches": INIT_BATCHES} if method.needs_data else {}),
        # Which of the teacher's checkpoints the factors came from: svd@1 never reuses svd.
        **({"teacher": teacher_identity(teacher)} if method.needs_teacher and teacher else {}),
    }
    key, found, content = reuse_or_key(
        "student-run",
        base_model,
        data,
        config,
        Path(output_dir) / f"final_model_{name}",
        reuse,
        memo,
        **identity,
    )
    if found is not None:
        return found
    accelerator = make_accelerator(config.device, config.precision)
    dtype = storage_dtype(config.precision)
    lend = accelerator.num_processes == 1  # DDP/FSDP wrap the model in place: load a copy
    if lend:
        base = shared.take(dtype, plan.ranks if method.rewrites_base else ())
    else:
        base = load_model(base_model, config.trust_remote_code, dtype)
    check_token_ids(base, tokenizer, data.train, data.evaluation)
    # Runs that start from the same model share their step-0 losses (see `fit`) and,
    # for a costly seedless init, the init itself.
    start = content_key(
        "student-start",
        model=base_model,
        data=[str(data.train_path), str(data.eval_path)],
        settings={k: v for k, v in config.to_dict().items() if k in START_SETTINGS},
        **start_identity(init, identity, config.seed),
    )
    initial_dir = None
    try:
        model = build_student(
            base,
            plan,
            init,
            config,
            dropout,
            data.train,
            tokenizer.pad_token_id,
            accelerator,
            factors,
            cached=(shared, start) if lend else None,
        )
        # What the start cost (its passes over the init rows and its decompositions), counted
        # from the shapes for every run, also where a cached start is reused.
        batches = (
            init_batches(len(data.train), config.batch_size, config.seed)
            if method.needs_data
            else []
        )
        init_cost = arm_init_flops(method, model, plan, data.train, batches, tokenizer.pad_token_id)
        if method.rewrites_base:
            # These inits rewrite the base weights (W - s B0 A0); keep the starting adapter so
            # the saved one can be converted into a plain LoRA on the untouched base (rank 2r).
            initial_dir = Path(tempfile.mkdtemp(prefix=f"{init}_init_"))
            model.peft_config["default"].init_lora_weights = True
            model.save_pretrained(initial_dir)
            model.peft_config["default"].init_lora_weights = method.init_lora_weights
        run = ArmRun(tokenizer, data, config, accelerator, progress, Path(output_dir))
        result, state_dict = run.fit(
            model,
            name,
            f"the trained weights of {name}",
            trainable_only=True,
            starts=shared.starts,
            start_key=start,
        )
        result.extras["trainable_parameters"] = sum(
            p.numel() for p in model.parameters() if p.requires_grad
        )
        extra = {
            "init": init,
            "seed": config.seed,
            "learning_rate": config.learning_rate,
            "init_flops": init_cost,
            **labels,
        }
        summary = arm_summary(name, result, {}) | extra
        if accelerator.is_main_process:
            folder = ensure_writable_dir(output_dir)
            final = folder / f"final_model_{name}"
            paths = {"adapter": final, **write_run_files(folder, name, result, config.to_dict())}
            summary = arm_summary(name, result, paths) | extra
            record = _record(base_model, init, plan, data, config) | content | labels
            with atomic_dir(final) as tmp:
                unwrapped = accelerator.unwrap_model(model)
                conversion = (
                    {"path_initial_model_for_weight_conversion": str(initial_dir)}
                    if initial_dir is not None
                    else {}
                )
                unwrapped.save_pretrained(tmp, state_dict=state_dict, **conversion)
                save_hyperparameters(tmp, {**record, "run_key": key, "summary": summary})
                # Per run, beside its adapter: the arms of a grid share the folder above.
                write_run_config(tmp, "train", record, {"base_model": base_model})
    except BaseException:
        shared.forget()  # the base may be half-way through an init: load it afresh
        raise
    finally:
        if initial_dir is not None:
            shutil.rmtree(initial_dir, ignore_errors=True)
    if lend:
        shared.give_back(accelerator.unwrap_model(model))
    return summary


def start_identity(init: str, identity: dict[str, Any], seed: int) -> dict[str, Any]:
    """What decides an arm's starting model besides the base: nothing for B = 0 inits,
    the init and its factors for the seedless ones, and the seed too for the rest."""
    method = get_init(init)
    if method.base_start:
        return {"init": "base"}
    return identity if method.seedless else {**identity, "seed": seed}


def build_student(
    base: Any,
    plan: LoraPlan,
    init: str,
    config: TrainConfig,
    dropout: float,
    train: Any,
    pad_id: int,
    accelerator: Any,
    factors: Mapping[str, LowRankFactors] | None = None,
    cached: tuple[SharedSetup, str] | None = None,
) -> Any:
    """The PEFT model of one arm at its starting point, checked against the shared plan.

    The data-driven inits read the first INIT_BATCHES micro-batches of this seed's
    schedule; `fit` recomputes the schedule from the seed, so training order is unchanged.
    `cached` (a shared setup and the arm's start key) reuses the start of an earlier run
    with the same costly seedless init, or the same data-driven init and seed (another
    learning rate), instead of computing it again.
    """
    import torch
    from peft import get_peft_model

    method = get_init(init)
    peft_config = method.lora_config(plan, dropout)
    if cached is not None and cached[1] in cached[0].inits:
        # The same start as an earlier run of this process: skip the costly init (pissa: an
        # SVD of every target weight; lora-one: a gradient pass and SVDs) and copy its
        # result, bit for bit.
        peft_config.init_lora_weights = True
        model = get_peft_model(base, peft_config)
        cached[0].restore_init(cached[1], model)
        model.peft_config["default"].init_lora_weights = method.init_lora_weights
    else:
        batches: list[tuple[int, ...]] = []
        if method.needs_data:
            batches = init_batches(len(train), config.batch_size, config.seed)
            if accelerator.num_processes == 1:
                base.to(accelerator.device)
        # Kaiming/gaussian A draws (and LoRA-GA's randomized SVD) depend on the seed only.
        torch.manual_seed(config.seed)
        start = InitStart(base, peft_config, plan, config.seed, factors, train, batches, pad_id)
        model = method.build(start) if method.build else get_peft_model(base, peft_config)
        if cached is not None and (method.costly or method.needs_data):
            seed = None if method.seedless else config.seed
            cached[0].remember_init(cached[1], model, method.rewrites_base, seed)
    check_plan(model, plan)
    # Training draws (dropout) start from the seed, however the start was obtained.
    torch.manual_seed(config.seed)
    return model


def factors_digest(factors: Mapping[str, LowRankFactors] | None) -> str | None:
    """sha256 over every module's factors, so a changed decomposition retrains its arms."""
    if factors is None:
        return None
    digest = hashlib.sha256()
    for module in sorted(factors):
        f = factors[module]
        digest.update(module.encode())
        for tensor in (f.B, f.A):
            digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _record(
    base_model: str, init: str, plan: LoraPlan, data: Any, config: TrainConfig
) -> dict[str, Any]:
    return {
        "role": "student",
        "init": init,
        "base_model": base_model,
        "lora_rank": plan.rank,
        "lora_alpha": plan.alpha,
        "ranks": plan.ranks,
        "train_data": str(data.train_path),
        "eval_data": str(data.eval_path) if data.eval_path else None,
        **config.to_dict(),
    }


def base_plan(
    base_model: str,
    rank: int,
    alpha: float | None,
    target_modules: Sequence[str] = (),
    factors: Mapping[str, LowRankFactors] | None = None,
) -> LoraPlan:
    """The LoRA plan every arm of an experiment shares."""
    return plan_lora(open_checkpoint(base_model), rank, alpha, target_modules, factors)
