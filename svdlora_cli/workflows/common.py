"""What every workflow shares: the cache options, progress hooks and the options record.

A workflow takes a typed options record, does the work, writes its outputs and
returns the result document. It never imports typer or rich: the CLI hands it
progress hooks, and the demo composes the same workflows.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .flags import nested
from .vocabulary import (
    BASE_MODEL,
    CACHE_DIR,
    CACHE_SIZE,
    DTYPE_POLICY,
    EXCLUDE,
    INCLUDE,
    NO_CACHE,
    OUTPUT_DIR,
    TEACHER_MODEL,
)

if TYPE_CHECKING:
    from ..store.cache import ArtifactCache

Document = dict[str, Any]
ItemProgress = Callable[[str, int, int], None]
StepProgress = Callable[[int, int, float], None]
DEFAULT_OUTPUT_DIR = Path("svdlora-out")


def _no_bar(_: str) -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext(None)


@dataclass
class Hooks:
    """How a workflow reports progress: item bars (tensors), step bars (training), headlines."""

    items: Callable[[str], contextlib.AbstractContextManager[ItemProgress | None]] = _no_bar
    steps: Callable[[str], contextlib.AbstractContextManager[StepProgress | None]] = _no_bar
    announce: Callable[[str], None] = lambda _: None


@dataclass(frozen=True)
class CacheOptions:
    """--cache-dir, --cache-size and --no-cache."""

    cache_dir: Path | None = CACHE_DIR.field(None)
    cache_size: str | None = CACHE_SIZE.field(None)
    no_cache: bool = NO_CACHE.field(False)

    def open(self) -> ArtifactCache:
        from ..store.cache import ArtifactCache, default_cache_dir, parse_size

        if self.no_cache:
            return ArtifactCache(None)
        return ArtifactCache(
            self.cache_dir or default_cache_dir(), size_limit=parse_size(self.cache_size)
        )


@contextlib.contextmanager
def cache_session(options: CacheOptions, shared: ArtifactCache | None) -> Iterator[ArtifactCache]:
    """The cache a step uses: the caller's open one (left open), or one opened and closed here."""
    if shared is not None:
        yield shared
        return
    cache = options.open()
    try:
        yield cache
    finally:
        cache.close()


@contextlib.contextmanager
def extraction(
    output_dir: Path, cache_options: CacheOptions, shared: ArtifactCache | None
) -> Iterator[ArtifactCache]:
    """The frame of every extraction step: the output folder checked before any work and
    locked (by the process that writes) until the outputs are in place, and the cache open.
    Under torchrun every rank computes its share; only the primary process writes."""
    from ..files import check_writable_dir
    from ..output_sets import locked_output

    check_writable_dir(output_dir)
    with (
        locked_output(output_dir, is_primary_process()),
        cache_session(cache_options, shared) as cache,
    ):
        yield cache


@dataclass(frozen=True)
class PairOptions:
    """The fields every extraction step shares: the model pair, its targets, the dtype
    policy, the output folder and the cache (their flags generate the CLI's options)."""

    base_model: str = BASE_MODEL.field()
    teacher_model: str = TEACHER_MODEL.field()
    include: tuple[str, ...] = INCLUDE.field(())
    exclude: tuple[str, ...] = EXCLUDE.field(())
    dtype_policy: str = DTYPE_POLICY.field("round")  # base vs teacher dtypes: dtype_policy.py
    output_dir: Path = OUTPUT_DIR.field(DEFAULT_OUTPUT_DIR)
    cache: CacheOptions = nested(CacheOptions, factory=CacheOptions)


R = TypeVar("R")


def extraction_step(
    options: Any,
    hooks: Hooks | None,
    shared: ArtifactCache | None,
    label: str,
    compute: Callable[[ArtifactCache, ItemProgress | None], R],
    write: Callable[[R], Document],
    replay: Callable[[ArtifactCache], Document | None] | None = None,
) -> Document | None:
    """delta, svd and layer-report: `compute` over the cache under a progress bar labelled
    `label` (every rank its share), then `write` the outputs on the primary process only.
    `replay`, when given, is tried first in the same frame (output folder locked, cache
    open): a document from it ends the step, None runs the full one.
    `options` has `output_dir` and `cache` (CacheOptions)."""
    bar = (hooks or Hooks()).items(label)
    with extraction(options.output_dir, options.cache, shared) as cache:
        done = replay(cache) if replay is not None else None
        if done is not None:
            return done
        with bar as update:
            result = compute(cache, update)
        if not is_primary_process():  # the other ranks computed their share
            return None
        return write(result)


def same_named(function: Callable[..., Any], options: Any, *skip: str) -> dict[str, Any]:
    """The fields of `options` that `function` takes by the same name (but `skip`): a field
    goes from the command line to the core under one name, never re-listed."""
    import inspect

    taken = inspect.signature(function).parameters
    names = [f.name for f in dataclasses.fields(options) if f.name in taken]
    return {name: getattr(options, name) for name in names if name not in skip}


def is_primary_process() -> bool:
    """False on the non-zero ranks of a torchrun / accelerate launch: they write nothing."""
    from ..distributed import Launch

    return Launch.from_env().primary


def record(options: Any) -> dict[str, Any]:
    """The options record as it goes into run_config.json (paths as strings). The cache's
    location is left out: it decides where results are kept, not what they are."""
    from ..files import json_safe

    out: dict[str, Any] = {}
    for f in dataclasses.fields(options):
        if f.name != "cache":
            value = getattr(options, f.name)
            out[f.name] = record(value) if dataclasses.is_dataclass(value) else json_safe(value)
    return out
