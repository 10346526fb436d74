"""`svdlora cache info|list|clear`: inspect and empty the artifact cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._options import CacheDirOpt, JsonOpt, OutputDirOpt
from ._output import emit, resolve_cache

if TYPE_CHECKING:
    from ..store.cache import ArtifactCache

app = typer.Typer(help="Inspect or clear the artifact cache.", no_args_is_help=True)


def _report(
    name: str,
    compute: Callable[[ArtifactCache], dict],
    render: Callable[[dict], Any],
    cache_dir: Path | None,
    output_dir: Path | None,
    json_output: bool,
) -> dict:
    """What every `cache` subcommand does: open the cache, `compute` its document, close the
    cache (whatever happens), save the document as `name` in `output_dir`, then emit it."""
    cache = resolve_cache(cache_dir, False)
    try:
        doc = compute(cache)
    finally:
        cache.close()
    if output_dir is not None:
        from ..files import ensure_writable_dir, write_json

        path = ensure_writable_dir(output_dir) / name
        write_json(path, doc)
        doc.setdefault("artifacts", {})[name.removesuffix(".json")] = str(path)
    emit(doc, json_output, render)
    return doc


@app.command("info")
def info(
    cache_dir: CacheDirOpt = None, output_dir: OutputDirOpt = None, json_output: JsonOpt = False
) -> None:
    """Where the cache is, how many entries it holds and its size on disk."""
    _report(
        "cache_info.json",
        lambda cache: cache.info(),
        lambda d: "\n".join(f"{k}: {v}" for k, v in d.items() if k != "artifacts"),
        cache_dir,
        output_dir,
        json_output,
    )


@app.command("list")
def list_entries(
    cache_dir: CacheDirOpt = None, output_dir: OutputDirOpt = None, json_output: JsonOpt = False
) -> None:
    """Every cached decomposition and statistics entry, newest first."""
    from ..reporting.tables import cache_table

    _report(
        "cache_list.json",
        lambda cache: {"directory": str(cache.directory), "entries": cache.entries()},
        lambda d: cache_table(d["entries"]),
        cache_dir,
        output_dir,
        json_output,
    )


@app.command("verify")
def verify(
    fix: Annotated[
        bool, typer.Option("--fix", help="Drop the entries that fail the check.")
    ] = False,
    cache_dir: CacheDirOpt = None,
    output_dir: OutputDirOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Check every cached payload against its sha256; exit 1 when some are bad and not fixed."""
    from ..errors import SvdloraError

    doc = _report(
        "cache_verify.json",
        lambda cache: {"directory": str(cache.directory), **cache.verify(fix)},
        lambda d: (
            f"{d['ok']} of {d['checked']} payloads intact"
            + "".join(f"\n  bad: {b['tensor']} ({b['problem']})" for b in d["bad"])
        ),
        cache_dir,
        output_dir,
        json_output,
    )
    if doc["bad"] and not doc["fixed"]:
        raise SvdloraError(
            f"{len(doc['bad'])} cache payload(s) failed the check",
            "run `svdlora cache verify --fix` to drop them (they are recomputed on demand)"
            if not fix
            else "the cache cannot be written now (see the warning); free space or fix its "
            "permissions, then rerun `svdlora cache verify --fix`",
        )


@app.command("clear")
def clear(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    cache_dir: CacheDirOpt = None,
    output_dir: OutputDirOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Delete every cached entry and payload."""
    from ..errors import SvdloraError

    def confirmed_clear(cache: ArtifactCache) -> dict:
        if not yes:
            if json_output or not typer.get_text_stream("stdin").isatty():
                raise SvdloraError(
                    "cache clear needs confirmation", "pass --yes to clear without a prompt"
                )
            typer.confirm(f"Delete everything in {cache.directory}?", abort=True)
        return {"directory": str(cache.directory), "removed": cache.clear()}

    _report(
        "cache_clear.json",
        confirmed_clear,
        lambda d: f"Removed {d['removed']} entries from {d['directory']}",
        cache_dir,
        output_dir,
        json_output,
    )
