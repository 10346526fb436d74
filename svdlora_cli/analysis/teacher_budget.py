"""What the teacher buys: the SVD arms by the teacher steps behind their init.

An svd arm reads the SVD of dW = W_teacher - W_base. Started from the teacher's checkpoint
after k steps it is `svd@k`; from the final teacher it is plain `svd` (k = the teacher's
whole run). Each point is an arm at its chosen learning rate (the protocol's grid): its
final eval loss with the 95% CI over seeds, its gap recovered at the end, and the teacher
steps and FLOPs behind it. The teacher-free arms at their chosen rates are the reference:
what the same student budget buys without any teacher.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..training.init_registry import flagged


def _family(label: str) -> str:
    """`svd@5` -> `svd`; `svd` -> `svd`."""
    return label.split("@", 1)[0]


def _point(arm: Mapping[str, Any], cell: Mapping[str, Any]) -> dict[str, Any]:
    flops = arm.get("flops") or {}
    return {
        "arm": arm["arm"],
        "init": arm["init"],
        "learning_rate": arm.get("learning_rate"),
        "teacher_step": arm.get("teacher_step"),
        "teacher_steps_total": arm.get("teacher_steps_total"),
        "final": arm.get("teacher_step") is not None
        and arm.get("teacher_step") == arm.get("teacher_steps_total"),
        "teacher_flops": flops.get("teacher"),
        "total_flops": flops.get("total"),
        "final_eval_loss": cell.get("mean"),
        "ci_low": cell.get("ci_low"),
        "ci_high": cell.get("ci_high"),
        "seeds": cell.get("n"),
        "recovered_end": arm.get("recovered_end"),
    }


def teacher_budget(comparison: Mapping[str, Any]) -> dict[str, Any] | None:
    """Per teacher-reading init family, its arms ordered by teacher steps; the teacher-free
    arms as references. None unless some family has an arm with a known teacher step and
    there are at least two points to set against each other."""
    arms = {a["arm"]: a for a in comparison.get("arms", [])}
    grid = (comparison.get("protocol") or {}).get("grid", {})
    families: dict[str, list[dict[str, Any]]] = {}
    references: list[dict[str, Any]] = []
    for label, entry in grid.items():
        arm = arms.get(entry.get("chosen_arm") or "")
        if arm is None:
            continue
        cell = next((c for c in entry["cells"] if c.get("chosen")), {})
        point = _point(arm, cell)
        if flagged(_family(label), "needs_teacher"):
            if point["teacher_step"] is not None:
                families.setdefault(_family(label), []).append(point)
        else:
            references.append(point)
    families = {
        name: sorted(points, key=lambda p: p["teacher_step"]) for name, points in families.items()
    }
    if not any(len(points) + len(references) >= 2 for points in families.values()):
        return None
    return {
        "basis": "each arm at its chosen learning rate; x: the teacher's optimizer steps "
        "behind the init (svd@k: its checkpoint after k steps; svd: the final teacher)",
        "families": families,
        "references": references,
    }
