"""`svdlora verify`: prove an adapter folder loads through PEFT and does what its factors say."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import BaseModelOpt, EvalDataOpt, JsonOpt, TeacherModelOpt
from ._output import emit


def verify(
    adapter: Annotated[Path, typer.Argument(help="PEFT LoRA adapter folder.")],
    base_model: BaseModelOpt = None,
    teacher_model: TeacherModelOpt = None,
    eval_data: EvalDataOpt = None,
    max_rows: Annotated[
        int, typer.Option("--max-rows", help="Eval rows for the teacher gap.")
    ] = 32,
    probe: Annotated[
        bool, typer.Option("--probe/--no-probe", help="Compare logits with a direct merge.")
    ] = True,
    tolerance: Annotated[
        float, typer.Option("--tolerance", help="Relative logit tolerance of the probe.")
    ] = 1e-4,
    json_output: JsonOpt = False,
) -> None:
    """Structural check, logits probe and, with --teacher-model, KL to the teacher.

    The adapter's config must agree with its tensors (rank, target_modules), and the
    modules PEFT wraps in the base must be exactly the adapter's, with their shapes; base +
    adapter must match the base with scale * B @ A merged directly; with a teacher, the
    share of KL(teacher || base) that the adapter closes is reported on eval rows.
    """
    from ..reporting.tables import verify_table
    from ..workflows import verify as workflow

    options = workflow.VerifyOptions(
        adapter=adapter,
        base_model=base_model,
        teacher_model=teacher_model,
        eval_data=eval_data,
        max_rows=max_rows,
        probe=probe,
        tolerance=tolerance,
    )
    emit(workflow.run(options), json_output, verify_table)
