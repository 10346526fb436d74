"""What every workflow shares: the cache options, progress hooks and the options record.

A workflow takes a typed options record, does the work, writes its outputs and
returns the result document. It never imports typer or rich: the CLI hands it
progress hooks, and the demo composes the same workflows.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

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

    cache_dir: Path | None = None
    cache_size: str | None = None
    no_cache: bool = False

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
    policy, the output folder and the cache (the CLI's `pair_options` group fills them)."""

    base_model: str
    teacher_model: str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    dtype_policy: str = "round"  # base vs teacher dtypes differ: see precision.py
    output_dir: Path = DEFAULT_OUTPUT_DIR
    cache: CacheOptions = field(default_factory=CacheOptions)


R = TypeVar("R")


def extraction_step(
    options: Any,
    hooks: Hooks | None,
    shared: ArtifactCache | None,
    label: str,
    compute: Callable[[ArtifactCache, ItemProgress | None], R],
    write: Callable[[R], Document],
) -> Document | None:
    """delta, svd and layer-report: `compute` over the cache under a progress bar labelled
    `label` (every rank its share), then `write` the outputs on the primary process only.
    `options` has `output_dir` and `cache` (CacheOptions)."""
    bar = (hooks or Hooks()).items(label)
    with extraction(options.output_dir, options.cache, shared) as cache:
        with bar as update:
            result = compute(cache, update)
        if not is_primary_process():  # the other ranks computed their share
            return None
        return write(result)


def check(ok: bool, message: str, hint: str) -> None:
    """A range check of one option: an InvalidOptionError (Error + Hint) when it fails."""
    if not ok:
        from ..errors import InvalidOptionError

        raise InvalidOptionError(message, hint)


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
