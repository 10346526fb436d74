"""The options of commands without an options record (`cache`), and --json, defined once.

Their flags and help come from the one vocabulary (workflows/vocabulary.py), so `--cache-dir`
reads the same in `cache info` as in `svd`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from ..workflows.vocabulary import CACHE_DIR, OUTPUT_DIR
from ._groups import option_type

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout (logs go to stderr).")
]
CacheDirOpt = option_type("cache_dir", CACHE_DIR, Path | None)
OutputDirOpt = option_type(
    "output_dir",
    dataclasses.replace(OUTPUT_DIR, help="Folder for a JSON copy of the result."),
    Path | None,
)
