"""Greedy exact-match accuracy of base, teacher and every run, cached by content."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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
    device: str = "cpu",
) -> None:
    """Greedy exact-match accuracy of the final `####` number for base, teacher and every run.

    Results are cached by the content of the model, the adapter and the eval slice (and
    the device type, when it is not the CPU). `device` decodes: auto is a GPU if any.
    """
    from ..data import load_examples, resolve_data_path
    from ..devices import decoding_device

    where = decoding_device(device)

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
    keys = {
        name: _generation_key(ref, adapter, examples, max_new_tokens, cache, where)
        for name, ref, adapter in models
    }
    results: dict[str, Any] = {}
    for name, key in keys.items():
        cached = cache.get_json(key) if cache is not None and key else None
        if cached is not None:
            results[name] = cached
    pending = [m for m in models if m[0] not in results]
    for name, result in _decode(pending, base_model, examples, max_new_tokens, progress, where):
        if cache is not None and keys[name]:
            cache.put_json(keys[name], result, tensor=f"generation:{name}")
        results[name] = result
    results = {name: results[name] for name, _, _ in models}
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


def _decode(
    models: Sequence[tuple[str, str, str | None]],
    base_model: str,
    examples: Sequence[Any],
    max_new_tokens: int,
    progress: Any,
    device: Any,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, exact-match result) of each model, the base and its adapters decoded together
    (`adapter_batch`), any other model (the teacher), or all when they cannot stack, alone."""
    from .adapter_batch import stacked_completions
    from .generation import exact_match, load_for_generation, score

    questions = [e.prompt for e in examples]
    shared = [m for m in models if m[1] == base_model]
    stacked = None
    if any(adapter is not None for _, _, adapter in shared) and len(shared) > 1:
        if progress:
            progress(f"{len(shared)} models of one base, together", len(shared), len(models))
        adapters = [adapter for _, _, adapter in shared]
        stacked = stacked_completions(base_model, adapters, questions, max_new_tokens, device)
    if stacked is not None:
        for (name, _, _), completions in zip(shared, stacked, strict=True):
            yield name, score(examples, completions)
    alone = [m for m in models if stacked is None or m not in shared]
    for i, (name, model_ref, adapter) in enumerate(alone):
        if progress:
            progress(name, len(models) - len(alone) + i + 1, len(models))
        model, tokenizer = load_for_generation(model_ref, adapter, device)
        yield name, exact_match(model, tokenizer, examples, max_new_tokens)


def _generation_key(
    model_ref: str,
    adapter: str | None,
    examples: Sequence[Any],
    max_new_tokens: int,
    cache: Any,
    device: Any,
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
        # A GPU's kernels round differently: its answers are its own (CPU keys unchanged).
        **({} if device.type == "cpu" else {"device": device.type}),
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
