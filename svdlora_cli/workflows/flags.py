"""The command-line face of an options record, declared on the record's own fields.

A field that is an option carries a `Flag` in its metadata: its help, its short form and
the names it had before (hidden aliases: they still parse, `--help` leaves them out). The
option is named after the field (`sketch_seed` is `--sketch-seed`, and the svdlora.toml
key `sketch_seed`), so a name is spelled once, in the record. `form(record)` lists a
record's options in field order and builds the record from their values; the CLI
(`cli/_groups.py`) turns the same list into typer options, as mergekit's options.py does.
Nothing here imports typer: a record stays plain data for notebooks and the demo.

A record declared elsewhere (TrainConfig, FieldNames) gets a `Group`: a table of its
fields' flags, placed on the field that holds it.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any

FLAG = "svdlora.flag"  # field metadata key: the field's Flag
GROUP = "svdlora.group"  # field metadata key: the Group of the record the field holds
UNSET: Any = object()  # Flag.cli_default: the field's default


@dataclass(frozen=True)
class Flag:
    """How one field reads from the command line."""

    help: str | Callable[[], str]  # a callable is read when the CLI is built (a registry's list)
    short: str | None = None  # "-r"
    aliases: tuple[str, ...] = ()  # old names, e.g. ("--model-name", "-m"): parsed, hidden
    switch: bool = False  # a bool read as --name/--no-name (else a bool is --name alone)
    type: Any = None  # what the command line reads when it is not the field's type
    parse: Callable[[Any], Any] | None = None  # command-line value -> field value
    envvar: str | None = None
    argument: bool = False  # positional, not --name
    name: str | None = None  # the option's name when it is not the field's (a foreign record)
    cli_default: Any = UNSET  # the command line's default when it is not the field's
    panel: str | None = None  # the --help section (default: Options)

    def field(self, default: Any = MISSING, *, factory: Any = MISSING, **changes: Any) -> Any:
        """A dataclass field that is this option, e.g. `rank: int = RANK.field(16)`;
        `changes` adapt it to one command (its help's default, say)."""
        flag = dataclasses.replace(self, **changes) if changes else self
        return field(default=default, default_factory=factory, metadata={FLAG: flag})

    @property
    def text(self) -> str:
        return self.help() if callable(self.help) else self.help


def option(default: Any = MISSING, **flag: Any) -> Any:
    """A field that is an option of one command only: `option(3, help="...")`."""
    return Flag(**flag).field(default)


def dashed(name: str) -> str:
    """`sketch_seed` -> `--sketch-seed`."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Group:
    """The options of a nested record: its fields' own flags, or for a record declared
    elsewhere a table of flags by field name; command-line-only flags (`extra`, e.g.
    --bf16) that `fold` turns into fields; per command the fields left out (`skip`) and
    other defaults."""

    record: Callable[..., Any]
    flags: Mapping[str, Flag] | None = None  # None: the record's fields carry their flags
    extra: Mapping[str, tuple[Any, Any, Flag]] = field(default_factory=dict)  # type, default
    fold: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    skip: frozenset[str] = frozenset()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    panel: str | None = None  # the --help section of its options

    def but(self, *skip: str, **defaults: Any) -> Group:
        """This group for one command: `skip` left out, `defaults` changed."""
        return dataclasses.replace(
            self, skip=self.skip | set(skip), defaults={**self.defaults, **defaults}
        )

    def field(self, *, factory: Any = MISSING) -> Any:
        """The field holding the record, its options generated from this group."""
        return field(default_factory=factory, metadata={GROUP: self})


def nested(record: Any, *skip: str, factory: Any = MISSING) -> Any:
    """A field holding a record whose fields carry their own flags (`skip`: left out)."""
    return Group(record, skip=frozenset(skip)).field(factory=factory)


@dataclass(frozen=True)
class Entry:
    """One command-line option: its name (the parameter and svdlora.toml key), the field it
    fills (None: an extra that the group folds), flag, type and command-line default."""

    name: str
    field: str | None
    flag: Flag
    type: Any
    default: Any
    required: bool

    @property
    def flag_name(self) -> str:
        return dashed(self.name)


@dataclass(frozen=True)
class Form:
    """A record's options in field order (`items`: an Entry, or a field with its own Form)."""

    record: Callable[..., Any]
    items: tuple[Entry | tuple[str, Form], ...]
    fold: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def entries(self) -> list[Entry]:
        """Every option, nested records' included, in order."""
        out: list[Entry] = []
        for item in self.items:
            out.extend([item] if isinstance(item, Entry) else item[1].entries())
        return out

    def kwargs(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The record's keyword arguments from command-line values (by option name): a
        value left out (None or empty) is left to the record's default, or is an error when
        the field has none; nested records are built."""
        kwargs: dict[str, Any] = {}
        for item in self.items:
            if not isinstance(item, Entry):
                kwargs[item[0]] = item[1].build(values)
                continue
            value = values.get(item.name)
            if value is None and item.default is not MISSING:
                value = item.default  # the command line's default (a command's own, say)
            if value is None or (isinstance(value, (list, tuple)) and not value):
                if item.required:
                    require(value, item.flag_name, item.name)
                continue
            if item.flag.parse is not None:
                value = item.flag.parse(value)
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[item.field or item.name] = value
        return self.fold(kwargs) if self.fold is not None else kwargs

    def build(self, values: Mapping[str, Any]) -> Any:
        """The record from command-line values (see `kwargs`)."""
        return self.record(**self.kwargs(values))


def check(ok: bool, message: str, hint: str) -> None:
    """A range check of one option: an InvalidOptionError (Error + Hint) when it fails."""
    if not ok:
        from ..errors import InvalidOptionError

        raise InvalidOptionError(message, hint)


def require(value: Any, option: str, key: str) -> Any:
    """A required option, which may also come from svdlora.toml."""
    if value in (None, "", [], ()):
        from ..errors import SvdloraError

        raise SvdloraError(
            f"no {option} given",
            f"pass {option}, or set {key} in svdlora.toml (`svdlora init` writes one)",
        )
    return value


def form(
    record: Any, *, optional: bool = False, group: Group | None = None, panel: str | None = None
) -> Form:
    """The options of `record` (a dataclass whose fields carry flags, or the record of
    `group`). `optional`: every command-line default is None (the record decides)."""
    items: list[Entry | tuple[str, Form]] = []
    table = group.flags if group is not None else None
    for f in dataclasses.fields(record):
        if group is not None and f.name in group.skip:
            continue
        if table is not None:
            if f.name not in table:
                continue
            flag = table[f.name]
        elif GROUP in f.metadata:
            sub: Group = f.metadata[GROUP]
            nested = form(sub.record, optional=optional, group=sub, panel=sub.panel or panel)
            items.append((f.name, nested))
            continue
        elif FLAG in f.metadata:
            flag = f.metadata[FLAG]
        else:
            continue
        if panel and flag.panel is None:
            flag = dataclasses.replace(flag, panel=panel)
        kind = _resolve(record, f.name, f.type)
        default, required = f.default, f.default is MISSING and f.default_factory is MISSING
        if group is not None and f.name in group.defaults:
            default = group.defaults[f.name]
        items.append(_entry(f.name, flag, kind, default, required, optional))
    if group is not None:
        for name, (kind, default, flag) in group.extra.items():
            if name not in group.skip:
                if panel and flag.panel is None:
                    flag = dataclasses.replace(flag, panel=panel)
                items.append(Entry(name, None, flag, kind, default, False))
    return Form(group.record if group else record, tuple(items), group.fold if group else None)


def _resolve(record: Any, name: str, kind: Any) -> Any:
    """A field's type as an object: its annotation read in the module that declared it."""
    if not isinstance(kind, str):
        return kind
    owner = next(c for c in record.__mro__ if name in vars(c).get("__annotations__", {}))
    return eval(kind, vars(sys.modules[owner.__module__]))  # our own annotations


def _entry(name: str, flag: Flag, kind: Any, default: Any, required: bool, optional: bool) -> Entry:
    """The Entry of field `name`: the command line reads `flag.type`, else the field's type
    (a tuple as a repeatable list); the default is None where the record decides."""
    if flag.type is not None:
        kind = flag.type
    elif typing.get_origin(kind) is tuple:
        kind = list[typing.get_args(kind)[0]]
    if flag.argument and required:
        return Entry(flag.name or name, name, flag, kind, MISSING, required)
    cli = flag.cli_default
    if cli is UNSET:
        plain = default is not MISSING and not isinstance(default, (tuple, list))
        cli = default if plain and not optional and flag.parse is None else None
    if cli is None and not allows_none(kind):
        kind = kind | None
    return Entry(flag.name or name, name, flag, kind, cli, required)


def allows_none(kind: Any) -> bool:
    """Whether a type takes None (`int | None`)."""
    return kind is None or (
        typing.get_origin(kind) in (typing.Union, types.UnionType)
        and type(None) in typing.get_args(kind)
    )
