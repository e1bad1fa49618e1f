"""Allocator tuning for training processes (called by the CLI, never on import).

A training step allocates and frees the same large buffers (convolution activations of several
MB) thousands of times. glibc's default policy hands blocks above its mmap threshold back to the
kernel on every free and trims the heap eagerly, so each step pays page faults to get them back
(seen here: a quarter of a CPU epoch in the kernel). Raising the thresholds keeps the memory in
the process — as PyTorch's own CUDA caching allocator does on GPUs.

:func:`release_free_memory` does the opposite once, for a measurement of resident memory (the
experiments' peak memory of a training step).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
from typing import Any

__all__ = ["release_free_memory", "tune_allocator"]

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def _glibc_function(name: str) -> Any:
    """glibc's function ``name`` (Linux), or ``None`` where there is no such C library."""
    if platform.system() != "Linux":
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Hand the allocator's free memory back to the kernel (glibc's ``malloc_trim``); return
    whether it could (a measurement of resident memory reads low without it: memory freed
    earlier but still resident serves new allocations unseen)."""
    trim = _glibc_function("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


def tune_allocator() -> bool:
    """Keep freed memory in the process (glibc on Linux); return whether it applied."""
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, 32 * 2**20),  # glibc's maximum
            (_M_TRIM_THRESHOLD, 1 << 30),
            (_M_TOP_PAD, 64 * 2**20),
        )
    )
    logger.debug("allocator tuning %s", "applied" if ok else "not applied")
    return ok
