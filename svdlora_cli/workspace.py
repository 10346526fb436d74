"""The workspace file `svdlora.toml`: defaults for any option of any command.

Top-level keys apply to every command that has an option of that name; a
`[command]` table (e.g. `[svd]`) applies to that command only. Options given on
the command line always win. Relative paths resolve against the file's folder.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from .errors import ConfigError
from .files import is_utf8, printable, write_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

WORKSPACE_FILE = "svdlora.toml"
# Keys holding paths; a relative value is taken from the workspace file's folder.
PATH_KEYS = frozenset(
    {
        "base_model",
        "teacher_model",
        "output_dir",
        "cache_dir",
    }
    | {"train_data", "eval_data", "svd_factors"}
)
ALWAYS_PATH_KEYS = frozenset({"output_dir", "cache_dir"})
# The seed's names, accepted as keys for the one option vocabulary of every command.
KEY_ALIASES = {"model_name": "base_model", "data_path": "train_data", "lora_rank": "rank"}


def find_workspace(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """`--config FILE`, else $SVDLORA_CONFIG, else ./svdlora.toml if present."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"config file {path} not found",
                "pass an existing file to --config, or create one with `svdlora init`",
            )
        return path
    env = os.environ.get("SVDLORA_CONFIG")
    if env:
        return find_workspace(env)
    local = Path.cwd() / WORKSPACE_FILE
    return local if local.is_file() else None


def _normalise(values: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        key = KEY_ALIASES.get(key, key)
        if key in out:
            seed_names = [a for a, k in KEY_ALIASES.items() if k == key]
            raise ConfigError(
                f"{key} is set twice ({' and '.join(seed_names)} is the seed's name for it)",
                f"keep one of {key} and {', '.join(seed_names)}",
            )
        if (
            key in PATH_KEYS
            and isinstance(value, str)
            and not Path(value).expanduser().is_absolute()
        ):
            candidate = folder / value
            if key in ALWAYS_PATH_KEYS or candidate.exists():
                value = str(candidate)
        out[key] = value
    return out


def load_workspace(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Top-level defaults and per-command tables of a workspace file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"cannot read {path}: {exc}",
            "fix the TOML syntax, or recreate it with `svdlora init --force`",
        ) from exc
    folder = path.resolve().parent
    flat = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {
        k.replace("-", "_"): _normalise(v, folder) for k, v in data.items() if isinstance(v, dict)
    }
    return _normalise(flat, folder), tables


def default_map(path: Path, commands: Mapping[str, Iterable[str]]) -> dict[str, dict[str, Any]]:
    """click `default_map` for each command name, from a workspace file.

    `commands` maps a command path ("svd", "cache.info") to its option names.
    Unknown keys are an error, so a typo never silently does nothing.
    """
    flat, tables = load_workspace(path)
    known = {name for names in commands.values() for name in names}
    unknown = sorted(set(flat) - known)
    for table, values in tables.items():
        if table not in {c.split(".")[0] for c in commands}:
            unknown.append(f"[{table}]")
        else:
            unknown += [f"{table}.{k}" for k in values if k not in known]
    if unknown:
        raise ConfigError(
            f"unknown key(s) in {path}: {', '.join(unknown)}",
            "use option names as keys (e.g. base_model, rank, output_dir); "
            "see `svdlora COMMAND --help`",
        )
    result: dict[str, Any] = {}
    for command, names in commands.items():
        parts = command.split(".")
        section = tables.get(parts[0], {})
        values = {n: flat[n] for n in names if n in flat}
        values.update({n: section[n] for n in names if n in section})
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node.setdefault(parts[-1], {}).update(values)
    return result


def _toml_string(text: str) -> str:
    """A TOML basic string; refuses text that is not valid UTF-8 (a surrogate-escaped path)."""
    if not is_utf8(text):
        raise ConfigError(
            f"{printable(text)} is not valid UTF-8, so a TOML file cannot hold it",
            "rename the file or folder to a UTF-8 name (or link to it from one)",
        )
    escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    out = []
    for char in text:
        if char in escapes:
            out.append(escapes[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return _toml_string(str(value))


def _render(flat: Mapping[str, Any], tables: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["# svdlora workspace: defaults for any option; the command line wins.", ""]
    lines += [f"{k} = {_toml_value(v)}" for k, v in flat.items() if v is not None]
    for name, table in tables.items():
        lines += [
            "",
            f"[{name}]",
            *(f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None),
        ]
    return "\n".join(lines) + "\n"


def write_workspace(path: Path, values: Mapping[str, Any], overwrite: bool = False) -> Path:
    """Write a flat workspace file (keys with None values are left out)."""
    if path.exists() and not overwrite:
        raise ConfigError(
            f"{path} already exists", "pass --force to replace it, or edit it by hand"
        )
    return write_text(path, _render(values, {}))


class _Statement(NamedTuple):
    """A header or key/value of a TOML file: its table, its lines (first..last), its key."""

    table: str | None  # None: top level; "": a table svdlora never writes ([a.b], [[x]])
    first: int
    last: int
    key: str | None  # None for a header or a dotted key
    header: bool


_KEY_LINE = re.compile(r"""^\s*([A-Za-z0-9_-]+|"[^"\\]*"|'[^']*')\s*=\s*""")


def _name(raw: str) -> str:
    """A key or table name as the option vocabulary spells it."""
    key = raw.strip("\"'").replace("-", "_")
    return KEY_ALIASES.get(key, key)


def _parses(text: str) -> dict[str, Any] | None:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None


def _statements(lines: list[str]) -> list[_Statement]:
    """Every header and key/value, each spanning the fewest lines that parse on their own
    (a multi-line array or string is one statement)."""
    out: list[_Statement] = []
    table: str | None = None
    i = 0
    while i < len(lines):
        text = lines[i].strip()
        if not text or text.startswith("#"):
            i += 1
            continue
        last = next((j for j in range(i, len(lines)) if _parses("".join(lines[i : j + 1]))), -1)
        if last < 0:
            raise ConfigError(f"line {i + 1} cannot be edited on its own", "edit it by hand")
        if text.startswith("["):
            parsed = _parses("".join(lines[i : last + 1])) or {}
            name, value = next(iter(parsed.items()), ("", None))
            table = name if value == {} and not text.startswith("[[") else ""
            out.append(_Statement(table, i, last, None, True))
        else:
            match = _KEY_LINE.match(lines[i])
            out.append(_Statement(table, i, last, match.group(1) if match else None, False))
        i = last + 1
    return out


def _replace_value(lines: list[str], at: _Statement, value: str) -> str:
    """The key/value `at` with `value`: its key, spacing, trailing comment and line end kept."""
    prefix = _KEY_LINE.match(lines[at.first])
    assert prefix is not None
    body = lines[at.last].rstrip("\r\n")
    head = "".join(lines[at.first : at.last])
    whole = _parses(head + body)
    start = prefix.end() if at.first == at.last else 0
    tail = ""
    for cut in (i for i, c in enumerate(body) if c == "#" and i >= start):
        if _parses(head + body[:cut]) == whole:  # the first "#" outside a string
            tail = body[len(body[:cut].rstrip()) :]
            break
    return f"{prefix.group(0)}{value}{tail}{lines[at.last][len(body) :]}"


def _plain(value: Any) -> Any:
    """A value as tomllib reads back what `_toml_value` wrote (NaN made comparable)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:
        return "nan"
    return value if isinstance(value, (bool, int, float)) else str(value)


def edit_toml(text: str, updates: Mapping[str | None, Mapping[str, Any]]) -> str:
    """`text` with each {table: {key: value}} set (None: the top level; None values skipped).

    A present key keeps its line, with the value replaced in place; a new key goes after
    the last key of its table, a new table at the end. Every other line (comments, blank
    lines, order, formatting) stays byte for byte. The result must read back as the old
    document plus the updates, else ConfigError: a wrong file is never returned.
    """
    old = tomllib.loads(text)
    lines = re.split(r"(?<=\n)", text)
    if lines[-1] == "":
        lines.pop()
    eol = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += eol
    statements = _statements(lines)
    expected = _plain(old)
    replace: dict[int, tuple[int, str]] = {}  # first line -> (last line, new text)
    insert: dict[int, list[str]] = {}  # before this line index -> new lines
    for table, values in updates.items():
        norm = None if table is None else table.replace("-", "_")
        mine = [
            s
            for s in statements
            if s.table == table or (s.table and s.table.replace("-", "_") == norm)
        ]
        name = next((s.table for s in mine), table)
        target = expected if name is None else expected.setdefault(name, {})
        new: list[str] = []
        for key, value in values.items():
            if value is None:
                continue
            found = next((s for s in mine if s.key and _name(s.key) == _name(key)), None)
            if found is None:
                new.append(f"{key} = {_toml_value(value)}{eol}")
                target[key] = _plain(value)
            else:
                replace[found.first] = (
                    found.last,
                    _replace_value(lines, found, _toml_value(value)),
                )
                target[found.key.strip("\"'")] = _plain(value)
        if not new:
            continue
        keys = [s for s in mine if not s.header]
        if keys or mine:  # after the table's last key, or right under its header
            at = max(s.last for s in (keys or mine)) + 1
        elif table is None:  # no top-level key yet: after the file's opening comments
            at = next(
                (i for i, line in enumerate(lines) if not line.lstrip().startswith("#")), len(lines)
            )
            if at < len(lines) and lines[at].strip():
                new.append(eol)
        else:
            at = len(lines)
            blank = not lines[-1].strip() if lines else not insert
            new = [*([] if blank else [eol]), f"[{table}]{eol}", *new]
        insert.setdefault(at, []).extend(new)
    out: list[str] = []
    i = 0
    while i <= len(lines):
        out += insert.get(i, [])
        if i == len(lines):
            break
        if i in replace:
            last, line = replace[i]
            out.append(line)
            i = last + 1
        else:
            out.append(lines[i])
            i += 1
    result = "".join(out)
    if not text.endswith("\n") and len(lines) not in insert:
        result = result[: -len(eol)]  # the last line had no line end: it still has none
    if _plain(_parses(result)) != expected:
        raise ConfigError(
            "the updated workspace file would not read back as intended",
            "edit it by hand: set "
            + "; ".join(
                f"{f'[{t}] ' if t else ''}{k} = {_toml_value(v)}"
                for t, vals in updates.items()
                for k, v in vals.items()
                if v is not None
            ),
        )
    return result


def update_workspace(
    path: Path, values: Mapping[str, Any], tables: Mapping[str, Mapping[str, Any]] | None = None
) -> Path:
    """Set top-level keys and per-command tables in a workspace file, keeping the user's
    comments, order and formatting (see `edit_toml`); written atomically."""
    if not path.exists():
        return write_text(path, _render(values, tables or {}))
    target = path.resolve()  # through a symlink: replace the file, not the link
    try:
        text = target.read_bytes().decode("utf-8")
        updated = edit_toml(text, {None: values, **(tables or {})})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot update {target}: {exc}", "fix or delete the file") from exc
    except ConfigError as exc:
        raise ConfigError(f"cannot update {target}: {exc.message}", exc.hint) from exc
    if updated != text:
        mode = target.stat().st_mode
        write_text(target, updated)
        os.chmod(target, mode & 0o7777)
    return path


def key_in_file(path: Path, command: str, name: str) -> str:
    """How a workspace file spells the key that set option `name` of `command`: "rank",
    "[svd] rank" (the command's table wins, as in `default_map`) or a seed alias."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return name
    section = command.split(".")[0].replace("-", "_")
    for table, values in data.items():
        if isinstance(values, dict) and table.replace("-", "_") == section:
            key = next((k for k in values if _name(k) == name), None)
            if key is not None:
                return f"[{table}] {key}"
    return next((k for k, v in data.items() if not isinstance(v, dict) and _name(k) == name), name)
