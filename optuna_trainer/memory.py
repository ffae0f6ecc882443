"""Giving a finished trial's host memory back to the operating system.

Dropping a trial's model, optimizer and batches frees them inside the process, but glibc's allocator keeps most of
the freed pages mapped: the resident memory between trials stays at the first trial's working set (on the MiniLM
benchmark about 190 MiB above what the process held before the search, docs/benchmarks.md figure 4). On a machine
that runs several workers, or a dataloader that forks after a trial, that is memory nobody uses. ``malloc_trim(0)``
hands the free pages back (a few milliseconds per trial); CUDA memory is returned separately by
``torch.cuda.empty_cache()``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_host_memory() -> bool:
    """Return the allocator's free heap pages to the operating system; True if the C library could do it."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
