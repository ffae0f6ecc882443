"""The study's trials as the search counts them: which states are finished, how many there are, which value is
better, putting a trial back in the queue, and a trial reporting another's evaluations (a repeat, skip_duplicates).

One place for each of these rules: the loop (search/loop.py), the best model (search/search.py), the progress bar,
the launcher and the stop rules all read them from here.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from optuna_trainer.study.storage import MAX_RETRY

logger = logging.getLogger(__name__)

# The trials that count towards `n_trials`: a failed trial does not (its place is run again).
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class TrialCounts:
    """The study's trials by state, as counted under the claim lock, against the study's `n_trials`."""

    n_trials: int
    finished: int
    running_numbers: frozenset[int]

    @property
    def running(self) -> int:
        return len(self.running_numbers)

    @property
    def done(self) -> bool:
        return self.finished >= self.n_trials

    @property
    def full(self) -> bool:
        """The finished and running trials fill `n_trials`: starting another could overshoot it."""
        return self.finished + self.running >= self.n_trials


def count_trials(study: optuna.Study, n_trials: int) -> TrialCounts:
    trials = study.get_trials(deepcopy=False)
    return TrialCounts(
        n_trials=n_trials,
        finished=sum(t.state in FINISHED for t in trials),
        running_numbers=frozenset(t.number for t in trials if t.state == TrialState.RUNNING),
    )


def count_finished(study: optuna.Study) -> int:
    """The trials that count towards `n_trials`: COMPLETE and PRUNED."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def is_better(value: Any, best: Any, direction: str) -> bool:
    """Whether `value` strictly beats `best` (None: nothing yet) in `direction` ("minimize" or "maximize")."""
    if best is None:
        return True
    return bool(value > best) if direction == "maximize" else bool(value < best)


def best_value(study: optuna.Study) -> float | None:
    """The study's best value, None when it has several objectives or no completed trial yet."""
    if len(study.directions) > 1:
        return None
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_value if complete else None


def requeue(study: optuna.Study, number: int, *, fail: bool = False) -> bool:
    """Queue trial `number` again with its parameters (and grid point), as a heartbeat storage does for a stale trial:
    the next run continues it from its last checkpoint (search/resume.py).

    Args:
        fail: mark the trial FAIL first (the launcher, for a worker that died with the trial RUNNING; the search's own
            trial is told FAIL by Optuna when its interrupt leaves the objective).

    Returns:
        Whether a copy was queued: not when one is queued already (a worker interrupted between queueing its trial
        and leaving, then found dead by the launcher) or the trial is unknown.
    """
    trials = study.get_trials(deepcopy=False)
    frozen = next((t for t in trials if t.number == number), None)
    if frozen is None:
        return False
    if fail:
        study.tell(number, state=TrialState.FAIL)
        frozen = study.get_trials(deepcopy=False)[number]
    # Optuna's retry copies carry `retry_history` (the trials they retry, last the one they copy).
    if any(t.system_attrs.get("retry_history", [None])[-1] == number for t in trials):
        return False
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, frozen)
    logger.info(f"Trial {number} is queued again with its parameters: the next run continues it")
    return True


def fail_stale_trials(study: optuna.Study) -> None:
    """Mark trials whose worker stopped beating as FAIL; the storage's callback re-queues them (no-op without
    heartbeats)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


# ---- grid studies ------------------------------------------------------------------------------------------------


def grid_retry_waiting(study: optuna.Study) -> bool:
    """Whether a grid study holds a queued trial (the retry of a failed grid point)."""
    return isinstance(study.sampler, optuna.samplers.GridSampler) and bool(
        study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    )


def grid_exhausted(study: optuna.Study) -> bool:
    """Every grid point has run (a failed point counts as run to Optuna: its queued retry does not)."""
    return (
        isinstance(study.sampler, optuna.samplers.GridSampler)
        and study.sampler.is_exhausted(study)
        and not grid_retry_waiting(study)
    )


def grid_points_never_completed(study: optuna.Study) -> list[tuple[dict[str, Any], list[int], bool]]:
    """The grid points whose every trial failed: `(params, failed trial numbers, a retry is queued)` each.

    A point is its parameters (a queued retry carries them, not always the grid's id): one that is running now or
    finished (COMPLETE or PRUNED) in any trial is not listed.
    """
    if not isinstance(study.sampler, optuna.samplers.GridSampler):
        return []
    by_point: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for trial in study.get_trials(deepcopy=False):
        params = trial.params or trial.system_attrs.get("fixed_params") or {}
        if not params:
            continue  # failed before its first suggestion: no point to name
        by_point.setdefault(repr(sorted(params.items())), []).append(trial)
    points = []
    for trials in by_point.values():
        states = {t.state for t in trials}
        if TrialState.FAIL not in states or states & {*FINISHED, TrialState.RUNNING}:
            continue
        failed = [t for t in trials if t.state == TrialState.FAIL]
        points.append((failed[0].params, [t.number for t in failed], TrialState.WAITING in states))
    return sorted(points, key=lambda point: point[1][0])


def log_grid_points_never_completed(study: optuna.Study) -> None:
    """Name, at the end of a search, the grid points whose trials all failed with a caught error: `GridSampler`
    counts a failed point as run, so the search ends with it missing. Such a point is not retried: the same
    parameters usually fail again (a retry after a killed worker or Ctrl-C is queued, and runs first)."""
    for params, numbers, queued in grid_points_never_completed(study):
        trials = ", ".join(str(n) for n in numbers)
        then = (
            "it is queued again: the next run of this search runs it"
            if queued
            else "the search ends without it; see each trial's fail_reason"
        )
        logger.warning(
            f"Study {study.study_name!r}: grid point {params} never completed: its trial(s) {trials} failed; {then}"
        )


def copy_evaluations(trial: optuna.trial.BaseTrial, twin: optuna.trial.FrozenTrial) -> None:
    """Report the twin's evaluations to `trial` at the same steps, as if it had trained (single objective only:
    Optuna takes no intermediate values for several)."""
    for step, value in sorted(twin.intermediate_values.items()):
        if math.isfinite(value):
            trial.report(value, step)


__all__ = [
    "copy_evaluations",
    "FINISHED",
    "TrialCounts",
    "best_value",
    "count_finished",
    "count_trials",
    "fail_stale_trials",
    "grid_exhausted",
    "grid_points_never_completed",
    "grid_retry_waiting",
    "is_better",
    "log_grid_points_never_completed",
    "requeue",
]
