"""One Optuna study driven by the main process while every process of a DDP group trains the same trial.

Under `accelerate launch` / torchrun, every rank runs the user's script and calls `hyperparameter_search()`. Rank 0
owns the study (the only process that opens the storage, samples, reports, prunes and writes records); the other
ranks follow it. Every decision is made on rank 0, or gathered from every rank, and then known to all ranks at the same
point of the program, so that no rank waits on a collective another rank will not join:

- the start of each trial and the end of the study (`n_trials`, `timeout`, `MaxTrialsCallback`, an uncaught error):
  rank 0 sends "next" or "stop" (with the error every rank then raises);
- the parameters: a `SyncTrial` on every rank, so that `hp_space(trial)` and `model_init(trial)` get rank 0's values;
  they are sent pickled, so floats arrive bit-identical;
- report and prune: `OptunaPruningCallback` asks rank 0's trial, and its `decide` (here
  `DistributedCoordinator.decide`) shares rank 0's decision, or an error raised on any rank, at every evaluation: all
  ranks stop at the same global step;
- the end of a trial: every rank sends its outcome (value, pruned, or its error); an error on any rank fails the trial
  on all of them, and rank 0's `study.optimize` (with or without `catch`) decides what happens next.

The coordination runs over its own gloo process groups with CPU tensors, as optuna-integration's
`TorchDistributedTrial` does, so it works
the same when the training group is NCCL (GPUs) or gloo (CPUs).

A rank that raises in the middle of a step leaves the others waiting in a collective of the training group (a DDP
gradient all-reduce, an evaluation gather) that it will never join. Those ranks get an error only when that collective
times out: the process group's timeout, `TrainingArguments.ddp_timeout` (1800 s by default; set it lower to fail such
trials sooner). With gloo the timeout raises, the ranks meet in the end-of-trial exchange, and since a timed-out
collective leaves the group out of step, every process group is rebuilt on the same rendezvous store before the next
trial. With NCCL, the NCCL watchdog usually aborts the processes on such a timeout (`TORCH_NCCL_ASYNC_ERROR_HANDLING`),
which ends the whole job rather than one trial: an error on every rank at once (a bad value, an out-of-memory in the
same step) or in a callback is caught collectively on either backend.

The search ends what it made: its own groups after a last barrier (`close`), and a default group it re-created at the
process's exit. A gloo group left to the interpreter's teardown can abort a process whose search has finished.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import pickle
import sys
import traceback
from collections.abc import Callable
from typing import Any

import optuna
import torch.distributed as dist
from transformers import TrainingArguments

from optuna_trainer._compat import set_process_group_timeout
from optuna_trainer.exceptions import CoordinationError, PeerFailedError
from optuna_trainer.processes.coordinator import Coordinator, LocalCoordinator, StopRequest
from optuna_trainer.study import attrs

logger = logging.getLogger(__name__)

# The end-of-trial exchange waits for ranks that are still stuck in a training collective until it times out, so the
# control group waits longer than the training group does.
_CONTROL_TIMEOUT_FACTOR = 3
_CONTROL_TIMEOUT_MARGIN_S = 60


class SyncTrial(optuna.trial.BaseTrial):
    """The trial every rank of a DDP group sees: rank 0's suggestions, bit-identical, and rank 0's errors, everywhere.

    optuna-integration's `TorchDistributedTrial` does the same job, with two differences that matter here: it sends
    `suggest_float` through a float32 tensor (every rank gets the same number, but not the float64 the study records:
    a learning rate of 3.0000001e-05 trains as 2.9999999e-05), and an error in rank 0's suggestion (an invalid range)
    leaves the other ranks waiting. Changing that would mean overriding its private `_call_and_communicate*`, so this
    is a `BaseTrial` of its own: every collective value is sent pickled (`broadcast_object_list`, which keeps Python's
    float64 and arbitrary ints exactly) together with rank 0's error, which every rank then raises.

    Only the suggestions and the trial's identity are collective. `report`, `should_prune`, `set_user_attr` and
    `set_constraint` act on rank 0's trial only (other ranks keep user attributes locally): the trainer calls them on
    paths that may differ between ranks (an error on one rank), and the pruning decision is shared by
    `DistributedCoordinator.decide` instead.
    """

    def __init__(self, trial: optuna.trial.BaseTrial | None, group: Any) -> None:
        self.group = group
        is_main = dist.get_rank(group) == 0
        if is_main != (trial is not None):
            raise ValueError("SyncTrial: rank 0 passes its optuna trial, every other rank passes None")
        self.delegate = trial

        def on_main() -> tuple[Any, ...]:
            assert trial is not None
            return trial.number, trial.params, trial.distributions, trial.user_attrs, trial.datetime_start

        identity = self._collective(("start",), on_main)
        self._number, self._params, self._distributions, self._user_attrs, self._datetime_start = identity

    def _gather(self, tag: tuple[Any, ...], payload: Any) -> list[Any]:
        """Every rank's `payload`, once every rank has come to the same exchange `tag`; a `ValueError` on every rank
        when they have not (a process that asks for another parameter, or one more, than the others)."""
        gathered: list[Any] = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(gathered, (tag, payload), group=self.group)
        tags = [record[0] for record in gathered]
        if any(t != tags[0] for t in tags):
            where = ", ".join(f"rank {rank} {_describe(t)}" for rank, t in enumerate(tags))
            raise ValueError(
                f"hp_space: the processes did not ask for the same parameters in the same order ({where}); every "
                "process must make the same trial.suggest_* calls: a callable hp_space or model_init must not "
                "depend on the process"
            )
        return [record[1] for record in gathered]

    def _collective(self, tag: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        """rank 0's `compute()` on every rank, or rank 0's error raised on every rank."""
        gathered = self._gather(tag, _outcome(compute) if self.delegate is not None else None)
        return _unwrap(gathered[0])

    def same_everywhere(self, values: dict[str, Any]) -> None:
        """Raise `ValueError` on every rank unless every rank got the same trial values (one trial, one set of
        values: a callable hp_space may compute a value per process instead of suggesting it)."""
        gathered = self._gather(("values", tuple(sorted(values))), _portable(values))
        for key in sorted(values):
            seen = [v.get(key) for v in gathered]
            if any(_differ(v, seen[0]) for v in seen):
                shown = ", ".join(f"rank {rank}: {v!r}" for rank, v in enumerate(seen))
                raise ValueError(
                    f"hp_space[{key!r}]: the processes got different values ({shown}); return what trial.suggest_* "
                    "gives (the same on every process), not a value computed per process"
                )

    def _suggested(self, name: str, suggest: Callable[[optuna.trial.BaseTrial], Any]) -> Any:
        delegate = self.delegate

        def on_main() -> tuple[Any, dict[str, Any]]:
            assert delegate is not None
            return suggest(delegate), delegate.distributions

        value, distributions = self._collective(("suggest", name), on_main)
        # Kept on every rank so that `params`/`distributions` read the same everywhere as on rank 0.
        self._params = {**self._params, name: value}
        self._distributions = distributions
        return value

    # ---- suggestions (collective) ------------------------------------------------------------------------------

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        return self._suggested(name, lambda t: t.suggest_float(name, low, high, step=step, log=log))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return self._suggested(name, lambda t: t.suggest_int(name, low, high, step=step, log=log))

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._suggested(name, lambda t: t.suggest_categorical(name, choices))

    def suggest_uniform(self, name: str, low: float, high: float) -> float:
        return self.suggest_float(name, low, high)

    def suggest_loguniform(self, name: str, low: float, high: float) -> float:
        return self.suggest_float(name, low, high, log=True)

    def suggest_discrete_uniform(self, name: str, low: float, high: float, q: float) -> float:
        return self.suggest_float(name, low, high, step=q)

    # ---- rank 0 only --------------------------------------------------------------------------------------------

    def report(self, value: float, step: int) -> None:
        if self.delegate is not None:
            self.delegate.report(value, step)

    def should_prune(self) -> bool:
        return bool(self.delegate.should_prune()) if self.delegate is not None else False

    def set_user_attr(self, key: str, value: Any) -> None:
        if self.delegate is not None:
            self.delegate.set_user_attr(key, value)
        self._user_attrs = {**self._user_attrs, key: value}

    def set_constraint(self, key: str, value: float) -> None:
        if self.delegate is not None:
            self.delegate.set_constraint(key, value)

    # ---- the trial's identity (the same on every rank) ----------------------------------------------------------

    @property
    def number(self) -> int:
        return int(self._number)

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._params)

    @property
    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return dict(self._distributions)

    @property
    def user_attrs(self) -> dict[str, Any]:
        return dict(self._user_attrs)

    @property
    def datetime_start(self) -> datetime.datetime | None:
        return self._datetime_start


class DistributedCoordinator:
    """The `Coordinator` (processes/coordinator.py) of a DDP group: keeps its processes in step (module docstring).

    Every exchange on the control group is an `all_gather_object` of a tagged record, so that a rank that left a trial
    early (its end-of-trial record) and a rank still training (its evaluation record) still meet in the same
    collective and can tell what the other is doing.
    """

    def __init__(self, timeout_s: float) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.is_main = self.rank == 0
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.control_timeout = datetime.timedelta(
            seconds=_CONTROL_TIMEOUT_FACTOR * timeout_s + _CONTROL_TIMEOUT_MARGIN_S
        )
        self.backend = dist.get_backend()
        _apply_timeout(self.timeout)
        # The rendezvous store outlives the process groups: rebuilding them after a failed trial reuses it.
        # torch has no public accessor for the default group's store; `_get_default_store` is the one it ships (since
        # torch 1.x). tests/processes/distributed/test_distributed_search.py fails if it disappears.
        self._store = dist.distributed_c10d._get_default_store()
        self._generation = 0
        # The default group this coordinator re-created after a failed trial (`_rebuild_groups`), if any.
        self._made_default: Any = None
        self.trial_group: Any = None
        self.control_group: Any = None
        self._make_groups()
        # A gloo group still alive when the interpreter finalizes can abort the process ("terminate called without an
        # active exception", SIGABRT) after the search has finished: its worker threads outlive the interpreter
        # (pytorch/pytorch#190489). `close` ends the groups at the end of a search; this handler ends them on the
        # paths that never get there (an uncaught error, an interrupt).
        atexit.register(self._close_at_exit)

    # ---- process groups ----------------------------------------------------------------------------------------

    def _make_groups(self) -> None:
        # gloo with CPU tensors, whatever the training backend is (as TorchDistributedTrial does under NCCL).
        self.trial_group = dist.new_group(backend="gloo", timeout=self.timeout)
        self.control_group = dist.new_group(backend="gloo", timeout=self.control_timeout)

    def _rebuild_groups(self) -> None:
        """Replace every process group with a fresh one; called by all ranks at the same point after a failure.

        A collective that timed out on some ranks (a rank failed in the middle of a step) leaves the group's sequence
        of collectives out of step, so the next trial's DDP would hang or mix messages. The default group is
        re-initialized on the same store under a new prefix; accelerate and DDP look it up at each use.
        """
        self._generation += 1
        try:
            dist.destroy_process_group()
            dist.init_process_group(
                backend=self.backend,
                store=dist.PrefixStore(f"optuna_trainer/{self._generation}/", self._store),
                rank=self.rank,
                world_size=self.world_size,
                timeout=self.timeout,
            )
            self._made_default = dist.group.WORLD
            self._make_groups()
        except Exception as err:
            raise CoordinationError(
                f"rank {self.rank}: could not rebuild the process groups after a failed trial: {err}"
            ) from err
        logger.debug(f"rank {self.rank}: process groups rebuilt after a failed trial (generation {self._generation})")

    def close(self) -> None:
        """End the coordination of this search: once every process is here, destroy the groups this coordinator made.

        Who owns what: the trial and control groups are this coordinator's, made for this search, so they end with it.
        The default group belongs to whoever initialized it (accelerate, torchrun with the user's script), and user
        code may still use it after the search (a final `trainer.train()`): it is left alone, except one that this
        coordinator re-created after a failed trial, which nobody else will destroy: it is destroyed at exit.
        """
        try:
            # No process may close its end of a group while another still talks on it.
            dist.barrier(group=self.control_group)
        except Exception as err:
            raise CoordinationError(
                f"rank {self.rank}: the processes of the search lost each other at its end ({type(err).__name__}: "
                f"{err}); another process probably crashed"
            ) from err
        self._destroy_own_groups()
        if self._made_default is None:
            atexit.unregister(self._close_at_exit)

    def _destroy_own_groups(self) -> None:
        groups, self.trial_group, self.control_group = (self.trial_group, self.control_group), None, None
        if not dist.is_initialized():
            return  # someone destroyed every group already (`destroy_process_group()`)
        for group in groups:
            if group is None:
                continue
            try:
                dist.destroy_process_group(group)
            except ValueError:
                pass  # already destroyed with the default group (a `destroy_process_group()` and a new init)

    def _close_at_exit(self) -> None:
        """The `atexit` end: local only (no barrier, the other processes may be gone), while the interpreter lives."""
        try:
            self._destroy_own_groups()
            if self._made_default is not None and dist.is_initialized() and dist.group.WORLD is self._made_default:
                dist.destroy_process_group()
        except Exception as err:  # noqa: BLE001 - at exit, a log line is all that is left to give
            logger.warning(f"rank {self.rank}: could not destroy the search's process groups at exit: {err}")

    # ---- exchanges --------------------------------------------------------------------------------------------

    def _exchange(self, record: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        gathered: list[Any] = [None] * self.world_size
        try:
            dist.all_gather_object(gathered, record, group=self.control_group)
        except Exception as err:
            raise CoordinationError(
                f"rank {self.rank}: the processes of the search lost each other ({type(err).__name__}: {err}); "
                f"another process probably crashed or hung for more than {self.control_timeout}"
            ) from err
        logger.debug(f"rank {self.rank}: {record[0]} -> {[r[0] for r in gathered]}")
        return gathered

    def share(self, value: Any = None) -> Any:
        """Rank 0's `value` on every rank (the others' arguments are ignored)."""
        return self._exchange(("share", _portable(value) if self.is_main else None))[0][1]

    def decide(self, outcome: str | BaseException | None) -> str | BaseException | None:
        """`OptunaPruningCallback`'s `decide`: the same outcome of an evaluation on every rank.

        An error on any rank (the first in rank order) wins over rank 0's stop reason; a rank that has already left
        the trial (its end-of-trial record) counts as an error, so the ranks still training stop and join it.
        """
        local = _portable(outcome) if isinstance(outcome, BaseException) else outcome
        records = self._exchange(("check", self.rank, local))
        _check_not_stopped(records)
        errors = _errors(records)
        if errors:
            return _primary(errors)[1]
        return records[0][2]

    def run_trial(self, run: Callable[[], Any]) -> Any:
        """Run one trial's body on this rank and return the trial's shared result.

        Returns rank 0's value; raises `optuna.TrialPruned` when rank 0 pruned the trial, or the trial's error (from
        any rank) on every rank.
        """
        outcome: tuple[Any, ...]
        local_error: BaseException | None = None
        try:
            outcome = ("ok", run())
        except optuna.TrialPruned as err:
            outcome = ("pruned", str(err))
        except Exception as err:  # noqa: BLE001 - every rank learns of it below
            local_error = err
            outcome = ("failed", _portable(err), "".join(traceback.format_exception(err)))
        outcomes = self._finish(outcome)
        failures = [(rank, o) for rank, o in enumerate(outcomes) if o[0] == "failed"]
        if not failures:
            kind, value = outcomes[0]
            if kind == "pruned":
                raise optuna.TrialPruned(value)
            return value
        self._rebuild_groups()
        source, error = _primary([(rank, o[1]) for rank, o in failures])
        if source == self.rank and local_error is not None and _origin(local_error, self.rank) == self.rank:
            error = local_error  # this rank's own error, with its traceback
        elif self.is_main and outcomes[source][0] == "failed" and len(outcomes[source]) > 2:
            logger.error(f"Trial failed on rank {source}:\n{outcomes[source][2]}")
        raise _with_note(error, f"the trial failed on rank {source}")

    def _finish(self, outcome: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        # Repeat until every rank is here: a rank still training meets this record in its own `decide` exchange,
        # stops, and comes here for the next round.
        while True:
            records = self._exchange(("end", self.rank, outcome))
            if all(r[0] == "end" for r in records):
                return [r[2] for r in records]
            _check_not_stopped(records)

    # ---- the search -------------------------------------------------------------------------------------------

    def optimize(
        self,
        study: optuna.Study | None,
        objective: Callable[[optuna.trial.BaseTrial], Any],
        *,
        drive: Callable[[optuna.Study, Callable[[optuna.trial.BaseTrial], Any]], Any],
        stop: StopRequest,
    ) -> None:
        """Rank 0 runs the trials (`drive(study, objective)`: the study's run loop, with its budget, timeout and
        `catch`); the other ranks follow it trial by trial until it sends "stop"."""
        if not self.is_main:
            self._follow(objective)
            return
        assert study is not None

        def main_objective(trial: optuna.trial.BaseTrial) -> Any:
            try:
                self._exchange(("next", None))
                return self.run_trial(lambda: objective(SyncTrial(trial, self.trial_group)))
            except optuna.TrialPruned:
                raise
            except CoordinationError:
                # The processes lost each other: no further trial can run, whatever `catch` says.
                stop.request()
                raise
            except Exception as err:
                # The trainer recorded this rank's error; the trial's error may come from another rank.
                notes = "; ".join(getattr(err, "__notes__", []))
                attrs.write(trial, fail_reason=f"{type(err).__name__}: {err} ({notes})"[:2000])
                raise

        try:
            drive(study, main_objective)
        except BaseException as err:
            self._send_stop(err)
            raise
        self._send_stop(None)

    def _send_stop(self, error: BaseException | None) -> None:
        try:
            self._exchange(("stop", _portable(error) if error is not None else None))
        except Exception as err:  # noqa: BLE001 - the original error matters more than this one
            if error is None:
                raise
            logger.error(f"could not tell the other processes that the search stopped: {err}")

    def _follow(self, objective: Callable[[optuna.trial.BaseTrial], Any]) -> None:
        while True:
            kind, payload = self._exchange(("wait", None))[0]
            if kind == "stop":
                if payload is not None:
                    raise payload
                return
            try:
                self.run_trial(lambda: objective(SyncTrial(None, self.trial_group)))
            except CoordinationError:
                raise
            except (optuna.TrialPruned, Exception):  # noqa: BLE001 - rank 0 records the trial and decides what's next
                pass

    def finish_search(self, compute: Callable[[], Any]) -> Any:
        """Rank 0's result of `compute()` (or its error) on every rank; the last exchange of a search (`close`)."""
        result = self.share(_outcome(compute) if self.is_main else None)
        self.close()
        return _unwrap(result)

    def setup(self, prepare: Callable[[], Any]) -> Any:
        """Run `prepare()` on every rank; if it fails on any rank, raise that error on all of them.

        Returns this rank's result.
        """
        result: Any = None
        error: BaseException | None = None
        try:
            result = prepare()
        except Exception as err:  # noqa: BLE001 - raised on every rank below
            error = _portable(err)
        errors = [r[1] for r in self._exchange(("setup", error)) if r[1] is not None]
        if errors:
            if error is not None:
                raise error
            raise errors[0]
        return result


def _check_not_stopped(records: list[tuple[Any, ...]]) -> None:
    """Rank 0 left `study.optimize` (an interrupt) while this rank was still in the trial: the search is over."""
    stop = records[0]
    if stop[0] == "stop":
        raise CoordinationError(f"the main process stopped the search during a trial: {stop[1]!r}") from (
            stop[1] if isinstance(stop[1], BaseException) else None
        )


def _apply_timeout(timeout: datetime.timedelta) -> None:
    """Make the training group time out after `ddp_timeout`, as the user asked.

    transformers passes `ddp_timeout` to accelerate except with `use_cpu=True`, where gloo keeps torch's 30-minute
    default: a rank left waiting by a failed peer would then wait that long. torch has no public setter for an existing
    group's timeout; `_set_pg_timeout` is the one it ships (used since torch 2.2): _compat.py.
    """
    try:
        if not set_process_group_timeout(timeout):
            logger.warning(f"this torch cannot set the process group's timeout; ddp_timeout={timeout} may not apply")
    except Exception as err:  # noqa: BLE001 - the search works without it, only slower to fail
        logger.warning(f"could not set the process group's timeout to {timeout}: {err}")


def _errors(records: list[tuple[Any, ...]]) -> list[tuple[int, BaseException]]:
    errors: list[tuple[int, BaseException]] = []
    for record in records:
        rank = record[1]
        if record[0] == "check" and isinstance(record[2], BaseException):
            errors.append((rank, record[2]))
        elif record[0] == "end":
            outcome = record[2]
            if outcome[0] == "failed":
                errors.append((rank, outcome[1]))
            else:
                errors.append((rank, PeerFailedError(f"rank {rank} ended the trial while this rank was evaluating")))
    for rank, err in errors:
        # A rank that raises this error because of an exchange raises a copy: remember where it came from, so that
        # the end of the trial names the rank where it happened.
        if _ORIGIN not in vars(err):
            setattr(err, _ORIGIN, rank)
    return errors


_ORIGIN = "optuna_trainer_rank"


def _origin(err: BaseException, rank: int) -> int:
    """The rank where `err` was first raised (`rank` itself unless it came from an exchange)."""
    return getattr(err, _ORIGIN, rank)


def _is_collateral(err: BaseException) -> bool:
    """An error caused by another rank's failure (a collective that timed out or lost its peer)."""
    if isinstance(err, PeerFailedError):
        return True
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        mark in text for mark in ("gloo", "Gloo", "NCCL", "Timed out", "timed out", "Connection closed")
    )


def _primary(errors: list[tuple[int, BaseException]]) -> tuple[int, BaseException]:
    """The error that caused the others, and the rank where it was raised: the first (in rank order) raised where it
    happened that is not a timeout or a peer's failure."""
    for rank, err in errors:
        if _origin(err, rank) == rank and not _is_collateral(err):
            return rank, err
    for rank, err in errors:
        if not _is_collateral(err):
            return _origin(err, rank), err
    rank, err = errors[0]
    return _origin(err, rank), err


def _with_note(err: BaseException, note: str) -> BaseException:
    if note in getattr(err, "__notes__", []):
        return err
    if sys.version_info >= (3, 11):
        err.add_note(note)
    else:  # add_note is Python 3.11+; keep the note where 3.11 keeps it
        setattr(err, "__notes__", [*getattr(err, "__notes__", []), note])  # noqa: B010 - undeclared before 3.11
    return err


def _describe(tag: tuple[Any, ...]) -> str:
    if tag[0] == "suggest":
        return f"suggests {tag[1]!r}"
    if tag[0] == "values":
        return f"is done with {list(tag[1])}"
    return "starts the trial"


def _differ(a: Any, b: Any) -> bool:
    try:
        return bool(a != b)
    except Exception:  # noqa: BLE001 - values that cannot be compared (arrays) are taken as different
        return True


def _outcome(compute: Callable[[], Any]) -> tuple[bool, Any]:
    """`(True, compute())`, or `(False, error)` with the error made sendable: it is raised on every rank."""
    try:
        return True, compute()
    except Exception as err:  # noqa: BLE001 - raised on every rank by `_unwrap`
        return False, _portable(err)


def _unwrap(result: tuple[bool, Any]) -> Any:
    ok, value = result
    if not ok:
        raise value
    return value


def _portable(value: Any) -> Any:
    """`value` if it survives pickling (to be sent to other ranks), else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(value))
        return value
    except Exception:  # noqa: BLE001 - any pickling problem
        if isinstance(value, BaseException):
            return RuntimeError(f"{type(value).__name__}: {value}")
        raise


def coordinator_for(args: TrainingArguments) -> Coordinator:
    """The coordinator for the processes `args` describes: distributed when a process group of several is up."""
    if args.world_size <= 1 or not dist.is_available() or not dist.is_initialized():
        return LocalCoordinator()
    return DistributedCoordinator(timeout_s=float(args.ddp_timeout))
