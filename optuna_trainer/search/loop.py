"""The study loop: run trials until the study holds exactly `n_trials` finished ones, however many workers share it.

Shaped like Optuna's `_optimize_sequential`: a plain loop whose named stop checks come first, then one trial. The
difference is the claim: `n_trials` is the study's total (finished = COMPLETE + PRUNED, bookkeeping.py), not a number
per worker or per run, so "count, then start a trial" must be one step across workers. Each turn:

1. stop checks: the timeout; then, under the study's claim lock (`claim()`, study/claims.py), stale trials failed
   (their storage re-queues them with their parameters), the trials counted, and the stop rules read: the budget is
   done, a stop rule holds (search/control.py), or the budget is full of trials running elsewhere;
2. ask -> run -> tell: `study.optimize(func, n_trials=1)` creates the trial (or takes a re-queued one) while the claim
   is held, and the objective releases the claim as its first act, so no two workers can claim the last slot and a
   grid point is never handed out twice. The trial runs inside Optuna's own one-trial loop (heartbeat thread,
   `tell`, logging, callbacks, `catch`): a bare `ask`/`tell` would lose those, and `GridSampler` calls
   `Study.stop()`, which raises outside `optimize`;
3. after the trial: failures in a row, and `Study.stop()`.

Ctrl-C or SIGTERM (processes/signals.py) can land anywhere in a turn. Inside the objective, the search marks its trial
FAIL and queues it again (search/search.py). Outside it (in Optuna's `ask`, before the objective's first line, in
Optuna's `tell`) nothing would: the trial would stay RUNNING in a storage without heartbeats, or FAIL with its grid
point never run. `_settle_interrupted_turn` closes those gaps before the interrupt leaves the loop.

When the budget is full only because trials are running elsewhere, a worker on a storage with heartbeats waits: if
one of those trials fails, or its worker is killed and the trial goes stale, this worker runs its replacement, so
nothing is lost. Without heartbeats a killed worker's trial would look running forever, so the worker stops instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from optuna_trainer._compat import study_stop_requested
from optuna_trainer.processes.coordinator import StopRequest
from optuna_trainer.study.bookkeeping import (
    TrialCounts,
    count_trials,
    fail_stale_trials,
    grid_retry_waiting,
    log_grid_points_never_completed,
    requeue,
)
from optuna_trainer.study.claims import ClaimLock

logger = logging.getLogger(__name__)

StopRule = Callable[[optuna.Study], "str | None"]


@dataclass
class HandedTrial:
    """The trial this turn handed to the objective, and how the objective left it (read when an interrupt ends the
    turn)."""

    number: int | None = None
    returned: bool = False
    value: Any = None
    pruned: bool = False
    interrupted: bool = False


class Claim:
    """The study's claim lock, held from the count until the trial exists in the storage (`release` is idempotent)."""

    def __init__(self, lock: ClaimLock) -> None:
        self.lock = lock
        self.held = False

    def acquire(self) -> None:
        self.lock.acquire()
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.lock.release()

    def handing_over(self, func: Callable[[optuna.Trial], Any], handed: HandedTrial) -> Callable[[optuna.Trial], Any]:
        """`func`, releasing the claim first: once Optuna calls the objective the trial is RUNNING in the storage,
        so the other workers may count again. `handed` records the trial and how `func` left it."""

        def claimed(trial: optuna.Trial) -> Any:
            handed.number = trial.number
            self.release()
            try:
                value = func(trial)
            except optuna.TrialPruned:
                handed.pruned = True
                raise
            except KeyboardInterrupt:
                handed.interrupted = True
                raise
            handed.returned, handed.value = True, value
            return value

        return claimed


@contextmanager
def claim(lock: ClaimLock) -> Iterator[Claim]:
    """Hold the study's claim lock for one turn of the loop; released on leaving unless handed over before."""
    held = Claim(lock)
    held.acquire()
    try:
        yield held
    finally:
        held.release()


def stop_requested(study: optuna.Study, stop: StopRequest) -> bool:
    """Whether no new trial should start: the search asked, or something called `study.stop()` (a user callback such
    as `MaxTrialsCallback`, or an exhausted `GridSampler`), which only ends the `optimize` call it is made in."""
    return stop.requested or study_stop_requested(study)


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
    stop_rule: StopRule | None = None,
) -> int:
    """Run trials of `study` until it has `n_trials` finished ones (counting every worker's), or a stop check holds.

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
    stop = stop if stop is not None else StopRequest()
    started = time.monotonic()
    ran = 0
    # Failed trials do not count towards the budget; a search whose every trial fails (an OOM at each batch size, a
    # bug caught by `catch`) must still end: this worker stops after max(n_trials, 10) failures in a row.
    failures_in_row = 0
    waiting_for: tuple[int, int] | None = None  # (finished, running) last said to be waited for
    poll = max(0.5, min(heartbeat_interval / 2, 10.0)) if heartbeat_interval else 0.0
    while True:
        if timeout is not None and time.monotonic() - started >= timeout:
            logger.info(f"timeout of {timeout} s reached: no new trial starts (this worker ran {ran})")
            break
        with claim(lock) as held:
            if heartbeat_interval:
                fail_stale_trials(study)
            counts = count_trials(study, n_trials)
            reason = _stop_reason(study, counts, stop_rule, heartbeat_interval)
            if reason is not None:
                logger.info(f"{reason} (this worker ran {ran})")
                break
            if counts.full:
                # Trials running elsewhere fill the budget: wait for one of them to fail or go stale.
                if waiting_for != (counts.finished, counts.running):
                    waiting_for = (counts.finished, counts.running)
                    logger.info(
                        f"Study {study.study_name!r}: {counts.finished} finished and {counts.running} running "
                        f"elsewhere fill n_trials={n_trials}; waiting for them (a trial whose worker was killed is "
                        f"retried here once its heartbeat is {2 * (heartbeat_interval or 0)} s old)"
                    )
                held.release()
                time.sleep(poll)
                continue
            waiting_for = None
            handed = HandedTrial()
            try:
                state = _run_one(study, held.handing_over(func, handed), catch, callbacks, gc_after_trial)
            except BaseException as err:
                interrupt = _interrupt_in(err)
                if interrupt is None:
                    raise
                _settle_interrupted_turn(study, counts.running_numbers, handed)
                raise interrupt from None
        ran += 1
        failures_in_row = failures_in_row + 1 if state == TrialState.FAIL else 0
        if failures_in_row >= max(n_trials, 10):
            logger.warning(
                f"{failures_in_row} trials in a row failed (see each trial's fail_reason): this worker stops "
                f"(this worker ran {ran})"
            )
            break
        if stop_requested(study, stop):
            if not stop.requested and grid_retry_waiting(study):
                # GridSampler stops once every point has started; a retry of one whose trial failed (a killed
                # worker, Ctrl-C) is queued and runs before the search ends.
                continue
            logger.info(f"Study.stop() was called: no new trial starts (this worker ran {ran})")
            break
    log_grid_points_never_completed(study)
    return ran


def _stop_reason(
    study: optuna.Study, counts: TrialCounts, stop_rule: StopRule | None, heartbeat_interval: int | None
) -> str | None:
    """Why this worker starts no new trial, read under the claim: the budget is done, a stop rule holds, or the
    budget is full of trials running elsewhere on a storage without heartbeats (nothing to wait for)."""
    if counts.done:
        return f"Study {study.study_name!r} has {counts.finished} finished trials of n_trials={counts.n_trials}: done"
    reason = stop_rule(study) if stop_rule is not None else None
    if reason is not None:
        return f"Study {study.study_name!r}: {reason}; no new trial starts"
    if counts.full and not heartbeat_interval:
        return (
            f"Study {study.study_name!r}: {counts.finished} finished and {counts.running} running elsewhere fill "
            f"n_trials={counts.n_trials}; this worker stops (this storage has no heartbeat, so it cannot tell a "
            "killed worker's trial from a live one; if one of them fails, run the command again to fill its place)"
        )
    return None


def _interrupt_in(err: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C/SIGTERM behind `err`: itself, or the interrupt that Optuna's one-trial loop turned into an
    `UnboundLocalError` (optuna 5.1 `_run_trial`: an interrupt inside its `tell` leaves `updated_state` unset for its
    `finally`, which reads it)."""
    if isinstance(err, KeyboardInterrupt):
        return err
    if isinstance(err, UnboundLocalError) and isinstance(err.__context__, KeyboardInterrupt):
        return err.__context__
    return None


def _settle_interrupted_turn(study: optuna.Study, running_before: frozenset[int], handed: HandedTrial) -> None:
    """Ctrl-C or SIGTERM ended this turn: leave no trial of it RUNNING with nothing running it, and no interrupted
    trial without its queued copy.

    - interrupted in `ask` (the claim is still held: no other worker can have created a trial since the count, whose
      RUNNING trials are `running_before`): the trial RUNNING now that was not then is this worker's; it is marked
      FAIL and queued again;
    - the objective returned, or pruned, and Optuna's `tell` was cut: what it measured is recorded, as `tell` would
      have (the best model may already hold its weights under its number);
    - otherwise still RUNNING (cut before the objective's first line): FAIL, queued again;
    - FAIL by the interrupt: queued again, unless the search queued it already (`requeue` does not queue twice).
    """
    if handed.number is None:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number not in running_before:
                requeue(study, trial.number, fail=True)
        return
    state = study.get_trials(deepcopy=False)[handed.number].state
    if state == TrialState.RUNNING:
        if handed.returned:
            study.tell(handed.number, handed.value)
        elif handed.pruned:
            study.tell(handed.number, state=TrialState.PRUNED)
        else:
            requeue(study, handed.number, fail=True)
    elif state == TrialState.FAIL and handed.interrupted:
        requeue(study, handed.number)


def _run_one(
    study: optuna.Study,
    func: Callable[[optuna.Trial], Any],
    catch: Sequence[type[Exception]],
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]],
    gc_after_trial: bool,
) -> TrialState | None:
    """Ask -> run -> tell one trial through Optuna's own loop; the trial's final state (None if it never ended)."""
    ended: list[TrialState] = []

    def record_state(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        ended[:] = [trial.state]

    study.optimize(
        func, n_trials=1, catch=tuple(catch), callbacks=[record_state, *callbacks], gc_after_trial=gc_after_trial
    )
    return ended[0] if ended else None


__all__ = ["Claim", "claim", "run_trials", "stop_requested"]
