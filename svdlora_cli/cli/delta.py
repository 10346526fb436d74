"""`svdlora delta`: how much each weight changed, and what a LoRA cannot capture."""

from __future__ import annotations

from ._options import (
    DEFAULT_OUTPUT_DIR,
    BaseModelOpt,
    CacheDirOpt,
    DtypePolicyOpt,
    ExcludeOpt,
    IncludeOpt,
    JsonOpt,
    NoCacheOpt,
    OutputDirOpt,
    TeacherModelOpt,
)
from ._output import cache_options, emit, hooks, require


def delta(
    base_model: BaseModelOpt = None,
    teacher_model: TeacherModelOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    dtype_policy: DtypePolicyOpt = "round",
    output_dir: OutputDirOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Per-target ||W||, ||dW||, relative change and max |dW|, with untargeted changes.

    Under torchrun the tensors are split across the processes; rank 0 writes the outputs.
    """
    from ..reporting.tables import delta_table
    from ..workflows import delta as workflow

    options = workflow.DeltaOptions(
        base_model=require(base_model, "--base-model", "base_model"),
        teacher_model=require(teacher_model, "--teacher-model", "teacher_model"),
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
        dtype_policy=dtype_policy,
        output_dir=output_dir or DEFAULT_OUTPUT_DIR,
        cache=cache_options(cache_dir, no_cache),
    )
    emit(workflow.run(options, hooks()), json_output, delta_table)
