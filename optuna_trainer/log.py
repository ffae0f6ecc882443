"""The package's logger: INFO by default with its own handler, as Optuna does, so that the resolved search settings
and trial results are seen without configuring logging; `set_verbosity` changes it."""

from __future__ import annotations

import logging
import sys

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


_root()
