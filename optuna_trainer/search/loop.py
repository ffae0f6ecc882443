"""Run a study's trials until it holds exactly `n_trials` finished ones, however many workers share it.

`n_trials` is the study's total budget (finished = COMPLETE + PRUNED), not a number per worker or per run. Before each
trial a worker takes the study's claim lock (see study/claims.py), fails the trials whose worker stopped beating (which
re-queues them with their parameters), and counts: if the finished and running trials already fill the budget it
starts nothing; otherwise `study.optimize(n_trials=1)` creates the trial (or takes a re-queued one) while the lock is
still held, and the objective releases the lock as its first act. So no two workers can claim the last slot, a grid
point is never handed out twice, and each trial still runs inside Optuna's own loop (heartbeat thread, `tell`,
logging, callbacks, `catch`).

When the budget is filled only because trials are running elsewhere, a worker on a storage with heartbeats waits: if
one of those trials fails, or its worker is killed and the trial goes stale, this worker runs its replacement, so
nothing is lost. Without heartbeats a killed worker's trial would look running forever, so the worker stops instead.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from optuna_trainer.study.claims import ClaimLock

logger = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class Budget:
    """The study's trials by state, as counted under the claim lock."""

    n_trials: int
    finished: int
    running: int

    @property
    def done(self) -> bool:
        return self.finished >= self.n_trials

    @property
    def full(self) -> bool:
        return self.finished + self.running >= self.n_trials


class StopRequest:
    """A request to start no new trial: made by the search itself, or by `study.stop()` (see `stop_requested`)."""

    def __init__(self) -> None:
        self.requested = False

    def request(self) -> None:
        self.requested = True


def stop_requested(study: optuna.Study, stop: StopRequest) -> bool:
    """Whether no new trial should start: the search asked, or something called `study.stop()`.

    `Study.stop()` only ends the `optimize` call it is made in, and the loop starts one `optimize` per trial. It is
    called by user callbacks (`MaxTrialsCallback`) and, from inside Optuna, by samplers whose space is exhausted
    (`GridSampler`, `BruteForceSampler`), so no wrapper around the callbacks can see every call; Optuna keeps the
    request in `Study._stop_flag` until the next `optimize` resets it, and has no public accessor for it (optuna
    >=4.2,<6, pyproject.toml). tests/search/test_loop.py::test_stop_flag_is_where_study_stop_records_it fails if it
    moves.
    """
    return stop.requested or bool(getattr(study, "_stop_flag", False))


def grid_retry_waiting(study: optuna.Study) -> bool:
    """Whether a grid study holds a queued trial (the retry of a failed grid point)."""
    return isinstance(study.sampler, optuna.samplers.GridSampler) and bool(
        study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
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


def count_finished(study: optuna.Study) -> int:
    """The trials that count towards `n_trials`: COMPLETE and PRUNED."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def count(study: optuna.Study, n_trials: int) -> Budget:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return Budget(
        n_trials=n_trials,
        finished=sum(s in FINISHED for s in states),
        running=sum(s == TrialState.RUNNING for s in states),
    )


def fail_stale_trials(study: optuna.Study) -> None:
    """Mark trials whose worker stopped beating as FAIL; the storage's callback re-queues them (no-op without heartbeats)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def run_trials(
    study: optuna.Study,
    func: Callable[[optuna.Trial], Any],
    *,
    n_trials: int,
    lock: ClaimLock,
    heartbeat_interval: int | None = None,
    timeout: float | None = None,
    catch: Sequence[type[Exception]] = (),
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = (),
    gc_after_trial: bool = False,
    stop: StopRequest | None = None,
    stop_rule: Callable[[optuna.Study], str | None] | None = None,
) -> int:
    """Run trials of `study` until it has `n_trials` finished ones (counting every worker's), or `timeout` passes.

    Args:
        func: the objective, called with each trial this worker claims.
        n_trials: the study's total budget of finished (COMPLETE or PRUNED) trials.
        lock: the study's claim lock.
        heartbeat_interval: the storage's heartbeat interval; None when it has none (then this worker does not wait
            for trials running elsewhere).
        timeout: seconds after which this worker starts no new trial.
        catch, callbacks, gc_after_trial: as in `Study.optimize`.
        stop: the caller's request to start no new trial (besides `study.stop()`).
        stop_rule: read from the study before every trial; a reason it returns ends the loop (search/control.py).

    Returns:
        The number of trials this worker ran.
    """
    start = time.monotonic()
    ran = 0
    stop = stop if stop is not None else StopRequest()
    # Failed trials do not count towards the budget; a search whose every trial fails (an OOM at each batch size, a
    # bug caught by `catch`) must still end: this worker stops after max(n_trials, 10) failures in a row.
    failures_in_row = 0
    last_state: list[optuna.trial.TrialState] = []

    def record_state(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        last_state[:] = [trial.state]

    waiting_for: tuple[int, int] | None = None
    poll = max(0.5, min(heartbeat_interval / 2, 10.0)) if heartbeat_interval else 0.0
    while True:
        if timeout is not None and time.monotonic() - start >= timeout:
            logger.info(f"timeout of {timeout} s reached: no new trial starts (this worker ran {ran})")
            break
        lock.acquire()
        held = True

        def claimed(trial: optuna.Trial) -> Any:
            nonlocal held
            # The trial is RUNNING in the storage now: the claim is made, let the other workers count.
            held = False
            lock.release()
            return func(trial)

        try:
            if heartbeat_interval:
                fail_stale_trials(study)
            budget = count(study, n_trials)
            if budget.done:
                logger.info(
                    f"Study {study.study_name!r} has {budget.finished} finished trials of n_trials={n_trials}: "
                    f"done (this worker ran {ran})"
                )
                break
            reason = stop_rule(study) if stop_rule is not None else None
            if reason is not None:
                logger.info(f"Study {study.study_name!r}: {reason}; no new trial starts (this worker ran {ran})")
                break
            if budget.full:
                if not heartbeat_interval:
                    logger.info(
                        f"Study {study.study_name!r}: {budget.finished} finished and {budget.running} running "
                        f"elsewhere fill n_trials={n_trials}; this worker stops (this storage has no heartbeat, so it "
                        "cannot tell a killed worker's trial from a live one; if one of them fails, run the command "
                        "again to fill its place)"
                    )
                    break
                if waiting_for != (budget.finished, budget.running):
                    waiting_for = (budget.finished, budget.running)
                    logger.info(
                        f"Study {study.study_name!r}: {budget.finished} finished and {budget.running} running elsewhere "
                        f"fill n_trials={n_trials}; waiting for them (a trial whose worker was killed is retried here "
                        f"once its heartbeat is {2 * heartbeat_interval} s old)"
                    )
                held = False
                lock.release()
                time.sleep(poll)
                continue
            waiting_for = None
            study.optimize(
                claimed,
                n_trials=1,
                catch=tuple(catch),
                callbacks=[record_state, *callbacks],
                gc_after_trial=gc_after_trial,
            )
            ran += 1
            failed = bool(last_state) and last_state[0] == optuna.trial.TrialState.FAIL
            failures_in_row = failures_in_row + 1 if failed else 0
            if failures_in_row >= max(n_trials, 10):
                logger.warning(
                    f"{failures_in_row} trials in a row failed (see each trial's fail_reason): this worker stops "
                    f"(this worker ran {ran})"
                )
                break
        finally:
            if held:
                lock.release()
        # `Study.stop()` (from a user callback, e.g. MaxTrialsCallback) only ends the current `optimize`.
        if stop_requested(study, stop):
            if not stop.requested and grid_retry_waiting(study):
                # GridSampler stops once every point has started; a retry of one whose trial failed (a killed
                # worker, Ctrl-C) is queued and runs before the search ends.
                continue
            logger.info(f"Study.stop() was called: no new trial starts (this worker ran {ran})")
            break
    log_grid_points_never_completed(study)
    return ran
