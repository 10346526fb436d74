"""One workflow per command: a typed options record in, outputs written, a document out.

The CLI parses options into the record and renders the document; `svdlora demo`
composes the same workflows. Nothing here imports typer or rich.
"""

from .common import CacheOptions, Hooks

__all__ = ["CacheOptions", "Hooks"]
