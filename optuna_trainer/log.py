"""The package's logger: INFO by default with its own handler, as Optuna does, so that the resolved search settings
and trial results are seen without configuring logging; `set_verbosity` changes it."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import optuna

_ROOT = "optuna_trainer"


def _root() -> logging.Logger:
    logger = logging.getLogger(_ROOT)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(levelname)s|%(name)s] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def set_verbosity(level: int) -> None:
    """Set the level of every `optuna_trainer` logger (e.g. `logging.WARNING` to quiet the search)."""
    _root().setLevel(level)


@contextmanager
def optuna_verbosity(level: int) -> Iterator[None]:
    """Optuna's verbosity at `level` inside the block and the caller's again after it, also when the block raises:
    scratch studies (a space probe, a replay's thousands) then log no "A new study created" line."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(level)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


_root()
