"""SIGTERM handled as Ctrl-C for the duration of a search.

Slurm (`scancel`, the end of a time limit), Kubernetes (a pod's deletion) and spot preemption stop a job with SIGTERM,
sent to every process of it, and kill it some seconds later. Python's default for SIGTERM ends the process at once:
the running trial stays RUNNING (or fails with whatever broke, e.g. a `BrokenPipeError` on a closed output), and is
never queued again. Raising `KeyboardInterrupt` instead takes the path Ctrl-C takes: the trial is marked FAIL and
queued again with its parameters, trackers close, and the same command continues the study.

A job's processes often get SIGTERM twice (once from the cluster, once passed on by `optuna-trainer workers` or
by `accelerate launch`): only the first one interrupts; a second one arriving while the interrupted trial is being
queued again would break that bookkeeping, so it is logged and ignored.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

# Conventional exit code of a process ended by SIGTERM (128 + 15), as shells report it.
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises `KeyboardInterrupt` in the main thread (once; later ones are ignored).

    Outside the main thread (signal handlers can only be set there) this does nothing. The previous handler is
    restored when the block ends, however it ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        if interrupted:
            logger.warning("SIGTERM again: already stopping (the interrupted trial is being queued again)")
            return
        interrupted = True
        logger.warning("SIGTERM: stopping as on Ctrl-C (the running trial is marked FAIL and queued again)")
        raise KeyboardInterrupt("SIGTERM")

    previous: Any = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        # None: a handler installed outside Python; SIG_DFL is the closest Python can put back.
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


__all__ = ["SIGTERM_EXIT_CODE", "interrupt_on_sigterm"]
