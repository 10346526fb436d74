"""The fair-comparison protocol over a grid of runs: only comparable runs, each once (see
`select_comparable`), one learning rate chosen per init on held-out eval loss, equal
budgets checked, and a paired verdict by seed.

Selection uses the final eval loss only (never the training loss or the accuracy
rows). A verdict compares the focus init (svd) with every other init at their chosen
learning rates, paired by seed: the mean difference and its 95% CI (Student t);
"better" or "worse" only when the interval excludes 0, else "no difference detected".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import SvdloraError
from .curve_stats import spread

# (figure, what it measures); lower is better for each.
VERDICT_FIGURES = (
    ("final_eval_loss", "final eval loss"),
    ("auc", "loss AUC"),
    ("steps_to_target", "steps to target"),
)
SELECTION_FIGURE = "final_eval_loss"


def _student_runs(arms: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(a, r) for a in arms if a["arm"] != "teacher" for r in a["runs"]]


def budgets(arms: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Optimizer steps and real tokens of every student run: equal within each seed (the
    seed fixes the batches, so token counts differ between seeds but never between arms)."""
    seen: dict[tuple[Any, Any, Any], list[str]] = {}
    for _, run in _student_runs(arms):
        key = (run.get("seed"), run.get("steps"), run.get("tokens"))
        seen.setdefault(key, []).append(run["name"])
    seeds = [seed for seed, _, _ in seen]
    steps = {steps for _, steps, _ in seen}
    return {
        "equal": len(seeds) == len(set(seeds)) and len(steps) <= 1,
        "groups": [
            {"seed": seed, "steps": steps, "tokens": tokens, "runs": names}
            for (seed, steps, tokens), names in sorted(seen.items(), key=lambda kv: str(kv[0]))
        ],
    }


def grid(arms: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """init -> {cells: [{learning_rate, arm, mean, ci_low, ci_high, n}], chosen: lr | None}."""
    out: dict[str, dict[str, Any]] = {}
    for arm in arms:
        if arm["arm"] == "teacher":
            continue
        values = [run.get(SELECTION_FIGURE) for run in arm["runs"]]
        cell = {"learning_rate": arm.get("learning_rate"), "arm": arm["arm"]}
        cell.update(asdict(spread(values)))
        out.setdefault(arm["init"], {"cells": [], "chosen": None, "chosen_arm": None})
        out[arm["init"]]["cells"].append(cell)
    for entry in out.values():
        entry["cells"].sort(key=lambda c: (c["learning_rate"] is None, c["learning_rate"] or 0))
        known = [c for c in entry["cells"] if c["mean"] is not None]
        if known:
            best = min(known, key=lambda c: c["mean"])
            best["chosen"] = True
            entry["chosen"], entry["chosen_arm"] = best["learning_rate"], best["arm"]
    return out


def _verdict(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        if high < 0:
            return "better"
        if low > 0:
            return "worse"
    return "no difference detected"


def paired(focus: dict[str, Any], other: dict[str, Any], figure: str) -> dict[str, Any]:
    """focus - other per shared seed (lower is better), its mean and 95% CI, and the verdict."""
    theirs = {run["seed"]: run.get(figure) for run in other["runs"]}
    diffs = [
        run[figure] - theirs[run["seed"]]
        for run in focus["runs"]
        if run["seed"] in theirs and run.get(figure) is not None and theirs[run["seed"]] is not None
    ]
    s = spread(diffs)
    return {
        "mean_difference": s.mean,
        "ci_low": s.ci_low,
        "ci_high": s.ci_high,
        "seeds": s.n,
        "verdict": _verdict(s.ci_low, s.ci_high),
    }


def protocol(arms: Sequence[dict[str, Any]], focus: str = "svd") -> dict[str, Any]:
    """The grid with the chosen learning rates, the budget check and the paired verdicts."""
    table = grid(arms)
    budget = budgets(arms)
    by_arm = {a["arm"]: a for a in arms}
    verdicts = []
    chosen = table.get(focus, {}).get("chosen_arm")
    for init, entry in table.items():
        if init == focus or chosen is None:
            continue
        row: dict[str, Any] = {
            "against": init,
            "focus_learning_rate": table[focus]["chosen"],
            "other_learning_rate": entry["chosen"],
        }
        if entry["chosen_arm"] is None or not budget["equal"]:
            row["verdict"] = (
                f"not ranked: no {init} run has a final eval loss"
                if entry["chosen_arm"] is None
                else "not ranked: the arms' budgets differ"
            )
            verdicts.append(row)
            continue
        row["figures"] = {
            figure: paired(by_arm[chosen], by_arm[entry["chosen_arm"]], figure)
            for figure, _ in VERDICT_FIGURES
        }
        row["verdict"] = row["figures"][SELECTION_FIGURE]["verdict"]
        row["seeds"] = row["figures"][SELECTION_FIGURE]["seeds"]
        verdicts.append(row)
    return {
        "focus": focus,
        "selection": f"per init, the learning rate with the lowest mean {SELECTION_FIGURE}",
        "grid": table,
        "budgets": budget,
        "verdicts": verdicts,
        "no_verdict": None if verdicts else _no_verdict(table, focus),
    }


def _no_verdict(table: dict[str, dict[str, Any]], focus: str) -> str:
    """Why there is no verdict at all, in words."""
    if len(table) < 2:
        return "fewer than two inits: nothing to compare"
    if focus not in table:
        return f"no {focus} runs: each verdict compares {focus} with another init"
    return f"no {focus} run has a final eval loss, so no learning rate is chosen for it"


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


def _key(run: Any, identity: Sequence[tuple[str, str]]) -> tuple[tuple[str, Any], ...]:
    """What must be equal between two runs to compare (or pool) them, as (label, value)."""
    record = run.record
    pairs = [(label, _frozen(record.get(name))) for label, name in identity]
    pairs += [(name, _frozen(record.get(name))) for name in SETTINGS]
    if run.is_teacher:
        return tuple(p for p in pairs if p[0] in TEACHER_KEYS)
    pairs.append(("target modules", _frozen(record.get("ranks"))))
    return (*pairs, (BUDGET, run.rows[-1].step))


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return f"{len(value)} modules"
    if isinstance(value, str) and len(value) == 64 and value.isalnum():
        return value[:12]  # a sha256
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


def _split_arms(group: Sequence[Any], selection: Selection) -> list[Any]:
    """Runs sharing a name but not an init and learning rate become one arm per setting."""
    settings: dict[str, set[tuple[Any, Any]]] = {}
    for run in group:
        init = run.record.get("init", run.arm)
        settings.setdefault(run.arm, set()).add((init, run.record.get("learning_rate")))
    out = []
    for run in group:
        if len(settings[run.arm]) == 1:
            out.append(run)
            continue
        init, lr = run.record.get("init", run.arm), run.record.get("learning_rate")
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
