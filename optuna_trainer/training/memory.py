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
import gc
import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import Trainer

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


def release_trial_memory(trainer: Trainer) -> None:
    """Drop every reference the trainer holds to a finished trial's model and optimizer, and give the memory back.

    transformers' search keeps the optimizer, scheduler and wrapped model of a pruned trial alive (it raises out of
    the loop); here they go before the next trial builds its own.
    """
    # Any: transformers types `model`, `optimizer`, ... as never None; here they are dropped.
    t: Any = trainer
    model = weakref.ref(t.model) if t.model is not None else None
    t.model_wrapped = t.model = None
    t.optimizer = t.lr_scheduler = None
    handler = t.callback_handler  # hands the model and optimizer to callbacks, and keeps them
    handler.model = handler.optimizer = handler.lr_scheduler = handler.train_dataloader = None
    # The accelerator holds the prepared model, optimizer and dataloaders too: a fresh one drops them. That frees the
    # model and optimizer at once when nothing else refers to them (a transformers model holds no reference cycles),
    # so the full collection (0.2-1 s per trial with torch loaded, docs/benchmarks.md figure 1) runs only when the
    # model is still alive, e.g. kept by a user's cycle.
    t.create_accelerator_and_postprocess()
    if model is not None and model() is not None:
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    # Freed host pages stay mapped by glibc (the RSS would stay at the first trial's peak): hand them back.
    release_host_memory()
