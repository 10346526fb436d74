"""`svdlora verify`: prove an adapter folder loads through PEFT and does what its factors say."""

from __future__ import annotations

from typing import Any

from ..workflows.verify import VerifyOptions
from ._groups import options_from
from ._options import JsonOpt
from ._output import emit


@options_from(VerifyOptions)
def verify(json_output: JsonOpt = False, options: Any = None) -> None:
    """Structural check, logits probe and, with --teacher-model, KL to the teacher.

    The adapter's config must agree with its tensors (rank, target_modules), and the
    modules PEFT wraps in the base must be exactly the adapter's, with their shapes; base +
    adapter must match the base with scale * B @ A merged directly; with a teacher, the
    share of KL(teacher || base) that the adapter closes is reported on eval rows.
    """
    from ..reporting.tables import verify_table
    from ..workflows import verify as workflow

    emit(workflow.run(options), json_output, verify_table)
