"""Capture what loggers emit, whatever stream their handlers hold (the package logger keeps its own handler)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.messages)


@contextmanager
def capture_logs(*names: str, level: int = logging.INFO) -> Iterator[_Collect]:
    """Collect the messages of the named loggers (and their children) at `level` and above."""
    handler = _Collect()
    loggers = [logging.getLogger(n) for n in (names or ("optuna_trainer",))]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(level)
    try:
        yield handler
    finally:
        for lg, old in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(old)
