"""One place that renders a result as a rich table or a JSON document, and reports progress."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from ..files import printable
from ..workflows.common import is_primary_process

stderr = Console(stderr=True)


class _WarningHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        warn(record.getMessage())


def setup_logging() -> None:
    """Core warnings (logger `svdlora`) go to stderr as `Warning: ...` lines."""
    logger = logging.getLogger("svdlora")
    if not any(isinstance(h, _WarningHandler) for h in logger.handlers):
        logger.addHandler(_WarningHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def warn(message: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    where = f"[rank {rank}] " if rank else ""
    text = escape(printable(where + message))
    stderr.print(f"[yellow]Warning:[/] {text}", highlight=False, soft_wrap=True)


def emit(
    doc: dict[str, Any] | None, as_json: bool, render: Callable[[dict[str, Any]], Any]
) -> None:
    """Print `doc` as JSON on stdout, or its rich rendering; warnings go to stderr first.

    Under a distributed launch only rank 0 prints (the other ranks' workflows return None),
    so stdout holds one document.
    """
    from ..files import dumps_json

    if doc is None or not is_primary_process():
        return
    doc = _printable(doc)  # a path from non-UTF-8 bytes: shown as \xNN, never a crash
    for message in doc.get("warnings", []):
        warn(message)
    if as_json:
        typer.echo(dumps_json(doc, indent=None))
    else:
        console = Console()
        if not console.is_terminal:
            console = Console(width=max(console.width, 140))
        console.print(render(doc))


def _printable(value: Any) -> Any:
    """`value` with every string made `printable` (JSON and tables need valid UTF-8)."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    if type(value) is tuple:
        return tuple(_printable(v) for v in value)
    if isinstance(value, Path):
        return Path(printable(str(value)))
    return value


@contextlib.contextmanager
def _bar(label: str) -> Iterator[Callable[[int, int | None, str], None]]:
    """A transient rich bar on a terminal; elsewhere (a log file, CI, nohup) a plain line at
    most every SVDLORA_PROGRESS_SECONDS (default 30) and at the end: step i/N, status, ETA."""
    import time

    if not progress_enabled():
        yield lambda done, total, text: None
        return
    if not stderr.is_terminal:
        every = float(os.environ.get("SVDLORA_PROGRESS_SECONDS", "30"))
        start = last = time.monotonic()

        def line(done: int, total: int | None, text: str) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last < every and done != total:
                return
            last = now
            eta = ""
            if total and done:
                eta = f", ETA {(now - start) * (total - done) / done:.0f} s"
            stderr.print(
                f"{label}: {done}/{total or '?'} {text} ({now - start:.0f} s{eta})",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )

        yield line
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn(f"[bold]{escape(label)}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}", style="dim"),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
    )
    task = bar.add_task("", total=None)
    with bar:
        yield lambda done, total, text: bar.update(
            task, completed=done, total=total, description=text
        )


@contextlib.contextmanager
def progress(label: str) -> Iterator[Callable[[str, int, int], None]]:
    """Progress over items (tensors, models); yields a callback (item, done, total)."""
    with _bar(label) as show:
        yield lambda item, done, total: show(done, total, item)


def resolve_cache(cache_dir: Path | None, no_cache: bool, size: str | None = None):
    """The artifact cache for a command (disabled with --no-cache; capped by --cache-size)."""
    from ..workflows.common import CacheOptions

    return CacheOptions(cache_dir, size, no_cache).open()


def progress_enabled() -> bool:
    """Progress bars draw on stderr unless SVDLORA_NO_PROGRESS is set (rank 0 only)."""
    return os.environ.get("SVDLORA_NO_PROGRESS") is None and is_primary_process()


@contextlib.contextmanager
def training_progress(label: str) -> Iterator[Callable[[int, int, float], None]]:
    """Progress over optimizer steps, showing the latest loss."""
    with _bar(label) as show:
        yield lambda step, total, loss: show(step, total, f"loss {loss:.4f}")


def hooks(announce: bool = False) -> Any:
    """Progress hooks for a workflow: rich bars on stderr, and headlines when `announce`."""
    from ..workflows.common import Hooks

    def say(text: str) -> None:
        if is_primary_process():
            stderr.print(f"[bold cyan]{escape(text)}[/]", highlight=False)

    return Hooks(
        items=progress, steps=training_progress, announce=say if announce else Hooks.announce
    )
