"""The `verify` step: structural check, logits probe and (with a teacher) gap closed, of any
PEFT LoRA adapter folder. It reads models and the adapter and writes nothing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .common import Document
from .flags import check, option
from .vocabulary import BASE_MODEL, EVAL_DATA, EVAL_LIMIT, PROBE, TEACHER_MODEL

TOLERANCE = 1e-4  # kept literal (the core's value) so that building options imports no torch


@dataclass(frozen=True)
class VerifyOptions:
    """Everything `svdlora verify` takes."""

    adapter: Path = option(help="PEFT LoRA adapter folder.", argument=True)
    base_model: str | None = BASE_MODEL.field(  # None: the adapter's base_model_name_or_path
        None,
        help="Base model: an HF folder, a cached hub id or a built-in name (default: the "
        "adapter's base_model_name_or_path).",
    )
    teacher_model: str | None = TEACHER_MODEL.field(None)
    eval_data: str | None = EVAL_DATA.field(None)
    eval_limit: int = EVAL_LIMIT.field(
        32, help="Use only the first N eval rows for the teacher gap.", aliases=("--max-rows",)
    )
    probe: bool = PROBE.field(True)
    tolerance: float = option(TOLERANCE, help="Relative logit tolerance of the probe.")

    def validate(self) -> None:
        check(
            self.eval_limit > 0,
            f"--eval-limit must be positive, got {self.eval_limit}",
            "use e.g. --eval-limit 32",
        )
        check(
            self.tolerance > 0,
            f"--tolerance must be positive, got {self.tolerance}",
            "use e.g. --tolerance 1e-4",
        )


def run(options: VerifyOptions) -> Document:
    """The verification document: adapter, base, teacher and every check's figures.

    The adapter's config and weight header are read through the checked reader first, so
    a corrupt or inconsistent adapter is refused before any model is loaded.
    """
    from ..adapters.factors import read_adapter_layout
    from ..adapters.verify import verify_adapter
    from ..errors import InvalidOptionError

    options.validate()
    if not (options.adapter / "adapter_config.json").is_file():
        raise InvalidOptionError(
            f"{options.adapter} is not a PEFT adapter folder (no adapter_config.json)",
            "pass a folder written by `svdlora svd` (adapter_rank*) or by PEFT's save_pretrained",
        )
    layout = read_adapter_layout(options.adapter)
    base = options.base_model or layout.base_model
    check(
        bool(base),
        "no --base-model given and the adapter names no base model",
        "pass --base-model with the model the adapter was made for",
    )
    checks = verify_adapter(
        options.adapter,
        str(base),
        probe=options.probe,
        teacher_ref=options.teacher_model,
        eval_data=options.eval_data,
        max_rows=options.eval_limit,
        tolerance=options.tolerance,
    )
    warnings = checks.pop("warnings", [])
    return {
        "adapter": str(options.adapter),
        "base_model": str(base),
        "teacher_model": options.teacher_model,
        **checks,
        "warnings": warnings,
    }
