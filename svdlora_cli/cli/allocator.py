"""glibc's malloc tuned for tensor work: large buffers reused, not mapped afresh each time.

By default glibc serves an allocation above a threshold (128 KB, rising with use to at
most 32 MB) with new pages from the kernel, and hands freed memory at the top of a heap
back once more than a threshold is free there. Each new page costs a fault and the
kernel's zeroing, 4 KB at a time. The SVD job allocates and frees tensors of megabytes
for every module, and its prefetch thread allocates the read buffers that the main
thread frees (another arena), so the same memory is faulted in again and again:
reading the 1.5B pair's 5.2 GB of targets through the prefetch thread took 2.1 s with
484k page faults, 0.74 s and none once tuned (benchmarks/bench_read.py). PyTorch's CPU
tuning guide points at the same cost (and at jemalloc or tcmalloc, which need LD_PRELOAD).

Measured on 2 cores (2026-12-06, alternating runs; RESULTS.md): a cold 0.5B `svd --rank
16` 20.1-21.7 s -> 18.2-18.9 s with the same bits, for about 50 MB more peak memory. A
SmolLM2-135M LoRA student's steps did not change beyond the noise (216-255 real
tokens/s either way, same losses).

So every command sets, once, before its work: no fresh mapping below 512 MB (a 7B
module's fp32 delta is 272 MB), no trimming until 256 MB are free at the top (512 MB
kept 40 MB more at 0.5B for no gain there), one arena for all threads. That is
process-wide and changes where memory comes from, never what any computation gives.
It is left alone where the user has chosen: MALLOC_* or GLIBC_TUNABLES in the
environment, an LD_PRELOADed allocator, or SVDLORA_MALLOC=system. Other C libraries
(musl, macOS) are left as they are.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc's malloc.h
MMAP_THRESHOLD = 512 << 20
TRIM_THRESHOLD = 256 << 20
OPT_OUT = "SVDLORA_MALLOC"

_done: str | None = None


def _user_choice(environ: Mapping[str, str]) -> str | None:
    if environ.get(OPT_OUT, "").strip().lower() in ("system", "default", "off", "0"):
        return f"{OPT_OUT}={environ[OPT_OUT]}"
    chosen = sorted(k for k in environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")
    if environ.get("LD_PRELOAD"):
        chosen.append("LD_PRELOAD")
    return ", ".join(chosen) if chosen else None


def tune_malloc(environ: Mapping[str, str] | None = None) -> str:
    """Apply the settings above once per process; returns "tuned" or why not."""
    global _done
    if _done is not None:
        return _done
    environ = os.environ if environ is None else environ
    reason = _user_choice(environ)
    if reason is not None:
        _done = f"left alone: {reason}"
    elif not sys.platform.startswith("linux") or not _glibc():
        _done = "left alone: not glibc"
    else:
        import ctypes

        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
        # The threshold first: if this glibc refuses it, setting the others alone would
        # switch off its adaptive threshold and map every block above 128 KB afresh.
        if mallopt is None or not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
            _done = "left alone: mallopt refused the threshold"
        else:
            mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
            mallopt(M_ARENA_MAX, 1)
            _done = "tuned"
    return _done


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        return False
