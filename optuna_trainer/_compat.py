"""Private names of other libraries (placeholder until the full module lands)."""

from __future__ import annotations

from typing import Any

import optuna


def study_stop_requested(study: optuna.Study) -> bool:
    return bool(getattr(study, "_stop_flag", False))


def set_train_batch_size(trainer: Any, size: int) -> None:
    trainer._train_batch_size = size
