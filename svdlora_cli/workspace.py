"""The workspace file `svdlora.toml`: defaults for any option of any command.

Top-level keys apply to every command that has an option of that name; a
`[command]` table (e.g. `[svd]`) applies to that command only. Options given on
the command line always win. Relative paths resolve against the file's folder.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .files import write_text

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


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


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


def update_workspace(
    path: Path, values: Mapping[str, Any], tables: Mapping[str, Mapping[str, Any]] | None = None
) -> Path:
    """Merge top-level keys and per-command tables into a workspace file, keeping the rest."""
    flat: dict[str, Any] = {}
    merged: dict[str, dict[str, Any]] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot update {path}: {exc}", "fix or delete the file") from exc
        flat = {k: v for k, v in data.items() if not isinstance(v, dict)}
        merged = {k: dict(v) for k, v in data.items() if isinstance(v, dict)}
    flat.update({k: v for k, v in values.items() if v is not None})
    for name, table in (tables or {}).items():
        merged.setdefault(name, {}).update({k: v for k, v in table.items() if v is not None})
    return write_text(path, _render(flat, merged))
