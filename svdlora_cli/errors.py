"""Typed user errors: each carries a one-line message and a hint for what to do."""

from __future__ import annotations


class SvdloraError(Exception):
    """A problem the user can fix. The CLI prints `Error: message` and `Hint: hint`."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ModelNotFoundError(SvdloraError):
    """A model reference is neither a local folder nor a hub id in the local HF cache."""


class CheckpointError(SvdloraError):
    """A checkpoint folder holds no readable weights, or a weight file is corrupt."""


class ModelMismatchError(SvdloraError):
    """Base and tuned checkpoints do not describe the same architecture."""


class InvalidOptionError(SvdloraError):
    """An option value is out of range or inconsistent with another."""


class ConfigError(SvdloraError):
    """The workspace file (svdlora.toml) is unreadable or holds unknown keys."""


class NonFiniteDeltaError(SvdloraError):
    """A weight delta contains NaN or Inf."""


class NonFiniteOutputError(SvdloraError):
    """Weights about to be written contain NaN or Inf (e.g. training diverged)."""


class OutputError(SvdloraError):
    """An output folder or file cannot be written."""


class OutputWriteError(OutputError):
    """Writing a file failed in the OS (disk full, quota, read-only mount, permissions)."""

    def __init__(
        self, message: str, hint: str, path: str, errno: int | None, needed: int | None = None
    ) -> None:
        super().__init__(message, hint)
        self.path = path
        self.errno = errno
        self.needed = needed


class TokenizerMismatchError(SvdloraError):
    """The tokenizer yields token ids past the model's embedding table (another model's)."""


class StepLogError(SvdloraError):
    """A training log (CSV) or run record (JSON) is malformed before its last line."""


__all__ = [
    "CheckpointError",
    "ConfigError",
    "InvalidOptionError",
    "ModelMismatchError",
    "ModelNotFoundError",
    "NonFiniteDeltaError",
    "OutputError",
    "OutputWriteError",
    "StepLogError",
    "SvdloraError",
    "TokenizerMismatchError",
]
