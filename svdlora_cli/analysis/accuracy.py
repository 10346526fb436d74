"""Greedy exact-match accuracy of base, teacher and every run, cached by content."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .compare import RunLog, first_set
from .curve_stats import spread


def attach_accuracy(
    doc: dict[str, Any],
    runs: Sequence[RunLog],
    base_model: str,
    teacher_model: str | None,
    eval_data: str | None,
    limit: int,
    max_new_tokens: int,
    progress: Any = None,
    cache: Any = None,
) -> None:
    """Greedy exact-match accuracy of the final `####` number for base, teacher and every run.

    Results are cached by the content of the model, the adapter and the eval slice.
    """
    from ..data import load_examples, resolve_data_path
    from .generation import exact_match, load_for_generation

    eval_path = eval_data or first_set(r.record.get("eval_data") for r in runs)
    offset = accuracy_offset(runs)
    examples = load_examples(resolve_data_path(eval_path, "eval"))[offset : offset + limit]
    if not examples:
        from ..errors import InvalidOptionError

        raise InvalidOptionError(
            f"the eval set has no rows left for accuracy after the first {offset}, which the "
            "eval loss (and so the learning-rate choice) was measured on",
            "pass a larger --eval-data, or train with a smaller --eval-limit",
        )
    models: list[tuple[str, str, str | None]] = [("base", base_model, None)]
    if teacher_model:
        models.append(("teacher", teacher_model, None))
    chosen = _chosen_arms(doc)
    models += [
        (r.name, base_model, str(r.model_dir))
        for r in runs
        if not r.is_teacher and r.model_dir and (chosen is None or r.arm in chosen)
    ]
    results = {}
    for i, (name, model_ref, adapter) in enumerate(models):
        if progress:
            progress(name, i + 1, len(models))
        key = _generation_key(model_ref, adapter, examples, max_new_tokens, cache)
        cached = cache.get_json(key) if cache is not None and key else None
        if cached is None:
            model, tokenizer = load_for_generation(model_ref, adapter)
            cached = exact_match(model, tokenizer, examples, max_new_tokens)
            if cache is not None and key:
                cache.put_json(key, cached, tensor=f"generation:{name}")
        results[name] = cached
    doc["accuracy"] = {
        "eval_data": str(resolve_data_path(eval_path, "eval")),
        "offset": offset,
        "limit": len(examples),
        "models": results,
    }
    for arm in doc["arms"]:
        values = [results[run["name"]]["accuracy"] for run in arm["runs"] if run["name"] in results]
        if arm["arm"] == "teacher" and "teacher" in results:
            values = [results["teacher"]["accuracy"]]
        s = spread(values)
        arm["accuracy"] = s.mean
        arm["spread"]["accuracy"] = asdict(s)


def _generation_key(
    model_ref: str, adapter: str | None, examples: Sequence[Any], max_new_tokens: int, cache: Any
) -> str | None:
    """Content key of one generation run, or None when there is no cache to key into."""
    if cache is None or not cache.enabled:
        return None
    import hashlib

    from ..models.checkpoints import fingerprint, open_checkpoint
    from ..store.cache import content_key

    adapter_digest = None
    if adapter is not None:
        digest = hashlib.sha256()
        for file in ("adapter_config.json", "adapter_model.safetensors"):
            digest.update((Path(adapter) / file).read_bytes())
        adapter_digest = digest.hexdigest()
    data = hashlib.sha256(
        "\x00".join(f"{e.prompt}\x01{e.answer}" for e in examples).encode()
    ).hexdigest()
    return content_key(
        "generation",
        model=fingerprint(open_checkpoint(model_ref), cache.memo),
        adapter=adapter_digest,
        data=data,
        max_new_tokens=max_new_tokens,
    )


def _chosen_arms(doc: dict[str, Any]) -> set[str] | None:
    """With a learning-rate grid, only each init's chosen cell is decoded (accuracy is a
    report of the selected arms, not a selection criterion); None: every run."""
    grid = (doc.get("protocol") or {}).get("grid") or {}
    if not any(len(entry["cells"]) > 1 for entry in grid.values()):
        return None
    return {entry["chosen_arm"] for entry in grid.values() if entry["chosen_arm"]}


def accuracy_offset(runs: Sequence[RunLog]) -> int:
    """Accuracy is measured on eval rows the eval loss never saw: the eval loss selects the
    learning rate, so the rows after the largest --eval-limit of the runs are decoded."""
    limits = [r.record.get("eval_limit") for r in runs if r.record]
    return max((int(v) for v in limits if v), default=0)
