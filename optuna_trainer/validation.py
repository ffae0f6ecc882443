"""One validator per search setting, shared by the two ways a setting arrives.

A value given to `OptunaTrainingArguments(...)` (or any class made by `with_search_fields`) is checked in its
`__post_init__` (`validate_search_fields`); the same value passed to `trainer.hyperparameter_search(...)` is checked
by `validate_call`, through the same table, so that a value refused in one is refused in the other with the same
message (`timeout=float("nan")`, `n_trials=0`, `direction="up"`). The call also takes Optuna's own keyword arguments
(`n_jobs`, `catch`, `callbacks`, ...); they are checked here too, before anything is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from optuna_trainer.space.budget import check_budget
from optuna_trainer.space.objective import normalize_direction
from optuna_trainer.study.artifacts import validate_artifact_store
from optuna_trainer.study.storage import MAX_HEARTBEAT_INTERVAL, check_study_name, validate_storage


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_n_trials(value: Any) -> None:
    if not _is_whole(value) or value < 1:
        raise ValueError(f"n_trials: must be a positive whole number, got {value!r}")


def check_timeout(value: Any) -> None:
    # `not value > 0` also refuses NaN, which compares false with everything (a timeout that would never fire).
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
        raise ValueError(f"timeout: must be a positive number of seconds or None, got {value!r}")


def check_direction(value: Any) -> None:
    normalize_direction(value)


def check_objective_metric(value: Any) -> None:
    if value is not None and not str(value).strip():
        raise ValueError("objective_metric: must be a metric name such as 'accuracy', got an empty string")


def check_prune_metric(value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"prune_metric: must be a metric name such as 'loss' or None, got {value!r}")


def check_study_name_text(value: Any) -> None:
    # Not a string at all: `check_study_name` says so, with the storage's length limit.
    if isinstance(value, str) and not value.strip():
        raise ValueError(f"study_name: must be a non-empty name or None, got {value!r}")


def check_heartbeat_interval(value: Any) -> None:
    if value is not None and (not _is_whole(value) or not 0 <= value <= MAX_HEARTBEAT_INTERVAL):
        raise ValueError(
            f"heartbeat_interval: must be a whole number of seconds from 0 (no heartbeats) to "
            f"{MAX_HEARTBEAT_INTERVAL} (a week), e.g. 60; got {value!r}"
        )


def check_target_value(value: Any) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    ):
        raise ValueError(f"target_value: must be a finite number (a value of the objective) or None, got {value!r}")


def check_trials_without_improvement(value: Any) -> None:
    if value is not None and (not _is_whole(value) or value < 1):
        raise ValueError(
            f"trials_without_improvement: must be a positive whole number of trials or None, got {value!r}"
        )


def _check_bool(name: str, spelled: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"{name}: must be {spelled}, got {value!r}")

    return check


def check_n_jobs(value: Any) -> None:
    if value != 1:
        raise ValueError(
            f"n_jobs: {value} is not supported: trials of one trainer share its model and devices; to run trials in "
            "parallel, start several workers on one shared storage (see docs/storage.md)"
        )


def check_catch(value: Any) -> None:
    for exc in tuple(value) if isinstance(value, (list, tuple)) else (value,):
        if not (isinstance(exc, type) and issubclass(exc, Exception)):
            raise TypeError(f"catch: expected exception classes, e.g. catch=(ValueError,), got {exc!r}")


def check_callbacks(value: Any) -> None:
    for callback in value or []:
        if not callable(callback):
            raise TypeError(f"callbacks: expected callables callback(study, trial), got {callback!r}")


# The search fields (arguments.py), each with its validator. Booleans of the arguments are spelled as a config file
# writes them ("true or false"), those of the call as Python does ("True or False").
FIELD_VALIDATORS: dict[str, Callable[[Any], object]] = {
    "n_trials": check_n_trials,
    "timeout": check_timeout,
    "direction": check_direction,
    "objective_metric": check_objective_metric,
    "study_name": check_study_name_text,
    "storage": validate_storage,
    "heartbeat_interval": check_heartbeat_interval,
    "artifact_store": validate_artifact_store,
    "prune_metric": check_prune_metric,
    "prune_budget": check_budget,
    "target_value": check_target_value,
    "trials_without_improvement": check_trials_without_improvement,
    "save_best_model": _check_bool("save_best_model", "true or false"),
    "search_report": _check_bool("search_report", "true or false"),
    "continue_on_oom": _check_bool("continue_on_oom", "true or false"),
    "oom_infeasible": _check_bool("oom_infeasible", "true or false"),
    "isolate_trials": _check_bool("isolate_trials", "true or false"),
    "enqueue_arguments": _check_bool("enqueue_arguments", "true or false"),
    "skip_duplicates": _check_bool("skip_duplicates", "true or false"),
}
# `hyperparameter_search(...)`'s own keyword arguments (transformers passes them on to Optuna).
CALL_VALIDATORS: dict[str, Callable[[Any], object]] = {
    "n_trials": check_n_trials,
    "timeout": check_timeout,
    "direction": check_direction,
    "directions": check_direction,
    "study_name": check_study_name_text,
    "storage": validate_storage,
    "n_jobs": check_n_jobs,
    "catch": check_catch,
    "callbacks": check_callbacks,
    "load_if_exists": _check_bool("load_if_exists", "True or False"),
    "show_progress_bar": _check_bool("show_progress_bar", "True or False"),
    "gc_after_trial": _check_bool("gc_after_trial", "True or False"),
}


def validate_search_fields(values: dict[str, Any]) -> None:
    """Check the search fields' values (all of them, defaults included); raise `ValueError` at the first bad one."""
    for name, check in FIELD_VALIDATORS.items():
        check(values[name])
    check_study_name(values["study_name"], values["storage"])


def validate_call(call: dict[str, Any]) -> None:
    """Check the values given to `hyperparameter_search(...)` (only those given: None means "from the arguments")."""
    for name, value in call.items():
        check = CALL_VALIDATORS.get(name)
        if check is not None and value is not None:
            check(value)
    if "study_name" in call or "storage" in call:
        check_study_name(call.get("study_name"), call.get("storage"))


__all__ = ["CALL_VALIDATORS", "FIELD_VALIDATORS", "validate_call", "validate_search_fields"]
