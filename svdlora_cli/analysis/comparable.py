"""Which runs `compare` may pool: one comparable group, each run once, the rest set apart.

Runs pool only when their records agree on the base (by weights fingerprint), the data
(by sha256), the eval set, the settings that shape a result, the target modules and the
budget; a run seen twice counts once. What is set apart is reported with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import SvdloraError
from ..training.teacher_checkpoints import init_label

# What runs must share to be compared: (label, content fingerprint field, fallback field).
# The fingerprint is used when every recorded run carries it, else the recorded reference.
IDENTITY = (
    ("base_model", "base_fingerprint", "base_model"),
    ("train_data", "train_data_sha256", "train_data"),
    ("eval_data", "eval_data_sha256", "eval_data"),
)
# The recorded settings that shape a student's result besides its init, learning rate and
# seed; with the identity, the target modules and the budget they make a run comparable.
SETTINGS = (  # noqa: SIM905 (a list literal takes 12 lines)
    "eval_limit lora_rank lora_alpha max_length batch_size tokens_per_step grad_accum "
    "weight_decay warmup_steps lr_scheduler max_grad_norm precision"
).split()
BUDGET = "budget (optimizer steps)"
TEACHER_KEYS = {label for label, _, _ in IDENTITY} | {"eval_limit"}


@dataclass
class Selection:
    """The runs to compare (one comparable group, each run once) and what was set apart."""

    runs: list[Any]
    set_apart: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def put_aside(self, runs: Sequence[Any], kind: str, reason: str, same_as: Any = None) -> None:
        def ref(run: Any) -> dict[str, Any]:
            return {"name": run.name, "seed": run.seed, "log": str(run.path)}

        entry = {"kind": kind, "reason": reason, "runs": [ref(r) for r in runs]}
        if same_as is not None:
            entry["same_as"] = ref(same_as)
            self.warnings.append(f"counted once: {_who(runs)} is {reason} {_who([same_as])}")
        else:
            self.warnings.append(f"set apart {_who(runs)}: {reason}")
        self.set_apart.append(entry)


def _who(runs: Sequence[Any], most: int = 4) -> str:
    named = [f"{r.name} ({r.path})" for r in runs[:most]]
    more = f" and {len(runs) - most} more" if len(runs) > most else ""
    return ", ".join(named) + more


def _recorded(run: Any) -> bool:
    """Whether the run has the record `svdlora train` writes (with its base model)."""
    return "base_model" in run.record


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted(value))  # the target modules of `ranks`
    return json.dumps(value, sort_keys=True) if isinstance(value, list) else value


@dataclass(frozen=True)
class _Content:
    """A content fingerprint that compares by digest and reads as the path it was taken of."""

    digest: str
    path: str = field(compare=False)

    def __str__(self) -> str:
        return f"{self.path} (content {self.digest[:12]})"


def _key(run: Any, identity: Sequence[tuple[str, str]]) -> tuple[tuple[str, Any], ...]:
    """What must be equal between two runs to compare (or pool) them, as (label, value)."""
    record = run.record
    pairs = [
        (
            label,
            _Content(record[name], str(record.get(label))) if name != label else record.get(name),
        )
        for label, name in identity
    ]
    pairs += [(name, _frozen(record.get(name))) for name in SETTINGS]
    if run.is_teacher:
        return tuple(p for p in pairs if p[0] in TEACHER_KEYS)
    pairs.append(("target modules", _frozen(record.get("ranks"))))
    return (*pairs, (BUDGET, run.rows[-1].step))


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return f"{len(value)} modules"
    return "none" if value is None else str(value)


def differences(
    key: Sequence[tuple[str, Any]],
    other: Sequence[tuple[str, Any]],
    them: str = "the compared runs",
) -> str:
    """`label value (them: value)` for each label whose values differ."""
    ours = dict(other)
    return "; ".join(
        f"{label} {_show(value)} ({them}: {_show(ours[label])})"
        for label, value in key
        if label in ours and ours[label] != value
    )


def _drop_copies(runs: Sequence[Any], selection: Selection) -> list[Any]:
    """Each run once: the same file, the same run key, or an identical copy counts once."""
    seen: dict[Any, Any] = {}
    kept = []
    for run in runs:
        record = run.record
        losses = tuple((r.step, r.loss, r.eval_loss, r.tokens) for r in run.rows)
        marks = [
            (("path", run.path.resolve()), "the same log file as"),
            (("key", record.get("run_key")), "the same run (same run key) as"),
            (
                ("rows", run.arm, record.get("learning_rate"), run.seed, losses),
                "an identical copy (same arm, seed and losses) of",
            ),
        ]
        first = next(((seen[m], why) for m, why in marks if m in seen), None)
        if first is not None:
            selection.put_aside([run], "duplicate", first[1], same_as=first[0])
            continue
        for mark, _ in marks:
            if mark != ("key", None):
                seen.setdefault(mark, run)
        kept.append(run)
    return kept


def arm_init(run: Any) -> str:
    """The run's init as compare tells arms apart (svd@k: from the teacher's checkpoint)."""
    return init_label(run.record) if run.record.get("init") else run.arm


def _split_arms(group: Sequence[Any], selection: Selection) -> list[Any]:
    """Runs sharing a name but not an init and learning rate become one arm per setting."""
    settings: dict[str, set[tuple[Any, Any]]] = {}
    for run in group:
        init = arm_init(run)
        settings.setdefault(run.arm, set()).add((init, run.record.get("learning_rate")))
    out = []
    for run in group:
        if len(settings[run.arm]) == 1:
            out.append(run)
            continue
        init, lr = arm_init(run), run.record.get("learning_rate")
        out.append(replace(run, arm=init if lr is None else f"{init}_lr{lr:g}"))
    for arm, found in settings.items():
        if len(found) > 1:
            selection.warnings.append(
                f"runs named {arm} have {len(found)} inits/learning rates: compared as "
                "one arm per init and learning rate"
            )
    return out


def _one_per_seed(group: Sequence[Any], selection: Selection) -> list[Any]:
    """One run per arm and seed (the first found); a repeat with other losses is a rerun."""
    seen: dict[tuple[str, int], Any] = {}
    kept = []
    for run in group:
        mark = (run.arm, run.seed)
        if run.seed is not None and mark in seen:
            selection.put_aside(
                [run],
                "duplicate",
                "another run (other losses) of the same arm and seed as",
                same_as=seen[mark],
            )
            continue
        seen.setdefault(mark, run)
        kept.append(run)
    return kept


def _main_group(groups: dict[tuple, list[Any]], teacher: Any, identity: Any) -> tuple:
    """The largest group; on a tie, the teacher's; with no two runs comparable, an error."""
    if not groups:
        return ()
    sizes = {
        k: len({(r.arm, r.seed if r.seed is not None else id(r)) for r in g})
        for k, g in groups.items()
    }
    size = max(sizes.values())
    largest = [key for key in groups if sizes[key] == size]
    if len(largest) > 1 and size > 1 and teacher is not None and _recorded(teacher):
        mine = [k for k in largest if not differences(_key(teacher, identity), k)]
        largest = mine if len(mine) == 1 else largest
    if len(largest) == 1:
        return largest[0]
    first, *rest = largest
    how = "; ".join(
        f"{_who(groups[k], 2)} differ from {_who(groups[first], 2)} in "
        f"{differences(k, first, 'theirs')}"
        for k in rest[:3]
    )
    what = (
        f"no two of the {sum(len(g) for g in groups.values())} runs can be compared"
        if size == 1
        else f"the runs form {len(largest)} equally large groups that cannot be pooled"
    )
    raise SvdloraError(
        f"{what}: {how}",
        "compare one experiment at a time (its folder, or its logs with --log): runs compare "
        "only with the same base model, data, eval set, budget, LoRA rank and settings",
    )


def select_comparable(runs: Sequence[Any]) -> Selection:
    """The runs `compare` may pool and rank, each once, and what it set apart, with why.

    A run counts once: the same log given twice, the same run key, an identical copy (a
    copied run folder) or a rerun of an arm and seed is a duplicate; the first found is kept
    (--log files, then the folder's top, then its subfolders). Students pool only when their
    records agree on the IDENTITY (base model, training data, eval set), the SETTINGS, the
    target modules and the budget (optimizer steps): arms differ by init and learning rate,
    seeds by seed. The largest group is compared (the experiment most runs belong to); a
    tie goes to the group the teacher was trained like, else it is an error, as it is when
    no two runs agree, rather than a guess. Runs without a record are set apart when others
    have one. The teacher is kept when its base, data and eval set are the group's.
    """
    selection = Selection([])
    unique = _drop_copies(runs, selection)
    students = [r for r in unique if not r.is_teacher]
    teachers = [r for r in unique if r.is_teacher]
    recorded = [r.record for r in unique if _recorded(r)]
    identity = [
        (label, exact if recorded and all(rec.get(exact) for rec in recorded) else named)
        for label, exact, named in IDENTITY
    ]
    checked = any(_recorded(r) for r in students)
    if checked:
        unrecorded = [r for r in students if not _recorded(r)]
        if unrecorded:
            selection.put_aside(
                unrecorded,
                "no record",
                "no run record (svdlora_run.json in its final_model_* folder) to tell it "
                "shares the base model, data and settings of the compared runs",
            )
        students = [r for r in students if _recorded(r)]
    groups: dict[tuple, list[Any]] = {}
    for run in students:
        groups.setdefault(_key(run, identity), []).append(run)
    main = _main_group(groups, next(iter(teachers), None), identity)
    kept = _one_per_seed(_split_arms(groups.get(main, []), selection), selection)
    total = len(kept)
    for key, group in groups.items():
        if key != main:
            selection.put_aside(
                group,
                "not comparable",
                f"not pooled with the {total} compared runs: {differences(key, main)}",
            )
    teacher = None
    for run in teachers:
        why = differences(_key(run, identity), main) if checked and _recorded(run) else ""
        if teacher is not None:
            selection.put_aside([run], "teacher", "another teacher log: only the first is used")
        elif why:
            selection.put_aside([run], "teacher", f"a teacher unlike the compared runs: {why}")
        else:
            teacher = run
    if teacher is not None and checked and not _recorded(teacher):
        selection.warnings.append(
            f"the teacher {_who([teacher])} has no run record: its base model and data are "
            "not checked against the compared runs"
        )
    selection.runs = ([teacher] if teacher is not None else []) + kept
    return selection
