"""Device checks: parse a --device string and map `cuda` to this process's GPU."""

from __future__ import annotations

import torch

from .distributed import Launch
from .errors import InvalidOptionError


def check_device(device: str) -> torch.device:
    """Parse a device string and make sure it exists here."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidOptionError(f"unknown device {device!r}", "use cpu, cuda or cuda:N") from exc
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise InvalidOptionError(
            f"device {device} requested but CUDA is not available",
            "use --device cpu, or install a CUDA build of torch on a machine with a GPU",
        )
    if parsed.type not in ("cpu", "cuda"):
        raise InvalidOptionError(f"device {device!r} is not supported", "use cpu, cuda or cuda:N")
    return parsed


def local_device(device: torch.device) -> torch.device:
    """`cuda` without an index means this process's GPU (LOCAL_RANK) under a launch."""
    if device.type != "cuda":
        return device
    index = Launch.from_env().local_rank if device.index is None else device.index
    count = torch.cuda.device_count()
    if index >= count:
        raise InvalidOptionError(
            f"device cuda:{index} requested but this machine has {count} GPU(s)",
            f"start at most {count} process(es) per node, or pass --device cpu",
        )
    return torch.device("cuda", index)


def decoding_device(device: str) -> torch.device:
    """--device of a command that only runs models forward: auto is this process's GPU when
    CUDA is available, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return local_device(check_device(device))
