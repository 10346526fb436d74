"""`svdlora delta`: how much each weight changed, and what a LoRA cannot capture."""

from __future__ import annotations

from ._options import (
    DEFAULT_OUTPUT_DIR,
    BaseModelOpt,
    CacheDirOpt,
    ExcludeOpt,
    IncludeOpt,
    JsonOpt,
    NoCacheOpt,
    OutputDirOpt,
    TeacherModelOpt,
)
from ._output import emit, is_primary_process, progress, require, resolve_cache


def delta(
    base_model: BaseModelOpt = None,
    teacher_model: TeacherModelOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    output_dir: OutputDirOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Per-target ||W||, ||dW||, relative change and max |dW|, with untargeted changes.

    Under torchrun the tensors are split across the processes; rank 0 writes the outputs.
    """
    from ..artifacts import write_delta_outputs
    from ..extraction import run_delta
    from ..files import check_writable_dir
    from ..reporting.tables import delta_table

    base = require(base_model, "--base-model", "base_model")
    tuned = require(teacher_model, "--teacher-model", "teacher_model")
    folder = check_writable_dir(output_dir or DEFAULT_OUTPUT_DIR)
    cache = resolve_cache(cache_dir, no_cache)
    try:
        with progress("dW") as update:
            result = run_delta(base, tuned, cache, include or (), exclude or (), progress=update)
    finally:
        cache.close()
    options = {"include": include, "exclude": exclude, "no_cache": no_cache}
    if not is_primary_process():  # the other ranks computed their share
        return
    doc = write_delta_outputs(result, folder, base, tuned, options)
    emit(doc, json_output, delta_table)
