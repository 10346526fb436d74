"""Typer options generated from an options record (see workflows/flags.py).

Each field of the record that carries a Flag becomes an option named after the field, and
each of its old names a hidden option that fills the same field; the command receives the
record, built from the values, in its `options` parameter. So a name is spelled once, in
the record, between the command line and the workflow (mergekit's options.py does the
same). The svdlora.toml keys are the option names, old names included, so old workspace
files keep working.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import MISSING
from typing import Annotated, Any

import typer

from ..workflows.flags import Entry, Flag, Form, allows_none, form

CONTEXT = "svdlora_context"  # the context parameter added to a command that takes none
# How explicitly a value was given, most first (click's ParameterSource names).
_EXPLICIT = {"COMMANDLINE": 0, "ENVIRONMENT": 1, "DEFAULT_MAP": 2}


def typer_option(entry: Entry) -> inspect.Parameter:
    """The typer parameter of one option."""
    flag = entry.flag
    if flag.argument:
        info: Any = typer.Argument(help=flag.text)
    else:
        decls = _decls(entry)
        info = typer.Option(*decls, help=flag.text, envvar=flag.envvar, rich_help_panel=flag.panel)
    default = inspect.Parameter.empty if entry.default is MISSING else entry.default
    return inspect.Parameter(
        entry.name,
        inspect.Parameter.KEYWORD_ONLY,
        annotation=Annotated[entry.type, info],
        default=default,
    )


def _decls(entry: Entry) -> list[str]:
    """`--name` (`--name/--no-name` for a switch) and the short form."""
    if entry.flag.argument:
        return []
    long = entry.flag_name
    return [f"{long}/--no-{long[2:]}" if entry.flag.switch else long] + (
        [entry.flag.short] if entry.flag.short else []
    )


def option_type(name: str, flag: Flag, kind: Any) -> Any:
    """The Annotated type of an option outside any record (a `cache` command's)."""
    return typer_option(Entry(name, name, flag, kind, None, False)).annotation


def hidden_aliases(flag: Flag) -> list[tuple[str, list[str]]]:
    """(parameter name, flags) of each old name: `--model-name -m` is one parameter,
    `model_name` (a short alias joins the long one before it)."""
    groups: list[tuple[str, list[str]]] = []
    for alias in flag.aliases:
        if alias.startswith("--"):
            groups.append((alias[2:].replace("-", "_"), []))
            alias = f"{alias}/--no-{alias[2:]}" if flag.switch else alias
        groups[-1][1].append(alias)
    return groups


def _rank(ctx: Any, name: str, value: Any, canonical: bool) -> int:
    """0 (command line) to 3 (a default): how explicitly `name` was given. Called from
    Python (no context), an alias counts as given when it is not None."""
    if ctx is None:
        return 1 if canonical else (3 if value is None else 0)
    source = ctx.get_parameter_source(name)
    return _EXPLICIT.get(getattr(source, "name", ""), 3)


def _choose(ctx: Any, entry: Entry, value: Any, aliases: list[tuple[str, str, Any]]) -> Any:
    """The value of `entry` from it and its old names: the most explicitly given wins, and
    the option at its new name wins a tie; given twice on the command line is an error."""
    from ..errors import InvalidOptionError

    best, best_rank, best_flag = value, _rank(ctx, entry.name, value, True), entry.flag_name
    for name, flag, alias_value in aliases:
        rank = _rank(ctx, name, alias_value, False)
        if rank == 0 and best_rank == 0:
            raise InvalidOptionError(
                f"{best_flag} and {flag} are one option, given twice",
                f"pass {entry.flag_name} only ({flag} is its old name)",
            )
        if rank < best_rank:
            best, best_rank, best_flag = alias_value, rank, flag
    return best


def options_from(
    record: Any,
    *,
    target: str = "options",
    optional: bool = False,
    build: Callable[..., Any] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command taking a `target` parameter: it gets `record`'s options (before
    its own ones) and receives the record built from them (`build(**kwargs)` instead
    where given). `optional`: every option defaults to None (the record decides)."""
    shape: Form = form(record, optional=optional)
    entries = shape.entries()

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = list(inspect.signature(command, eval_str=True).parameters.values())
        if target not in {p.name for p in own}:
            raise TypeError(f"{command.__name__} must take a `{target}` parameter")
        kept = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p.name != target]
        context = [p for p in kept if p.annotation is typer.Context]
        rest = [p for p in kept if p.annotation is not typer.Context]
        ctx_name = context[0].name if context else CONTEXT
        if not context:
            context = [
                inspect.Parameter(
                    CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context, default=None
                )
            ]
        hidden: list[inspect.Parameter] = []
        aliases: dict[str, list[tuple[str, str]]] = {}
        for entry in entries:
            kind = entry.type if allows_none(entry.type) else entry.type | None
            for name, decls in hidden_aliases(entry.flag):
                info = typer.Option(*decls, hidden=True)
                hidden.append(
                    inspect.Parameter(
                        name,
                        inspect.Parameter.KEYWORD_ONLY,
                        annotation=Annotated[kind, info],
                        default=None,
                    )
                )
                aliases.setdefault(entry.name, []).append((name, decls[0].split("/")[0]))
        params = [*context, *map(typer_option, entries), *rest, *hidden]
        declared = [(e.name, _decls(e)) for e in entries]
        declared += [(n, d) for e in entries for n, d in hidden_aliases(e.flag)]
        _check_unique(command.__name__, [p.name for p in params], declared)

        @functools.wraps(command)
        def wrapper(**values: Any) -> Any:
            ctx = values.get(ctx_name) if ctx_name != CONTEXT else values.pop(CONTEXT, None)
            chosen = {}
            for entry in entries:
                value = values.pop(entry.name, None if entry.default is MISSING else entry.default)
                olds = [(n, f, values.pop(n, None)) for n, f in aliases.get(entry.name, [])]
                chosen[entry.name] = _choose(ctx, entry, value, olds)
            built = build(**shape.kwargs(chosen)) if build else shape.build(chosen)
            return command(**values, **{target: built})

        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


def _check_unique(command: str, names: list[str], declared: list[tuple[str, list[str]]]) -> None:
    """Every parameter name and every flag once in a command (an alias may not shadow)."""
    flags = [part for _, decls in declared for decl in decls for part in decl.split("/")]
    twice = {n for n in names if names.count(n) > 1} | {f for f in flags if flags.count(f) > 1}
    if twice:
        raise TypeError(f"{command}: {sorted(twice)} declared twice")
