"""Several workers on one study run `n_trials` in total: no trial twice, no grid point twice, nothing lost."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from optuna_trainer.processes.coordinator import StopRequest
from optuna_trainer.search.loop import run_trials
from optuna_trainer.study.bookkeeping import requeue
from optuna_trainer.study.claims import local_lock
from optuna_trainer.study.storage import open_storage
from optuna_trainer.training.faults import OOM_FAULT
from tests.support import capture_logs, require_service, start_worker, wait_all

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"
GRID = {
    "learning_rate": {"type": "categorical", "choices": [1e-3, 3e-3, 1e-2]},
    "weight_decay": {"type": "categorical", "choices": [0.0, 0.01]},
}  # 6 points


@pytest.fixture
def study_name() -> str:
    return f"t-workers-{uuid.uuid4().hex[:10]}"


def _delete(study_name: str, storage: str) -> None:
    opened = open_storage(storage, ".", heartbeat_interval=None)
    try:
        optuna.delete_study(study_name=study_name, storage=opened.storage)
    except KeyError:
        pass


@pytest.fixture
def pg(study_name: str) -> Iterator[str]:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    yield PG
    _delete(study_name, PG)


@pytest.fixture
def redis_url(study_name: str) -> Iterator[str]:
    require_service("Redis", "127.0.0.1", 6379)
    yield REDIS
    _delete(study_name, REDIS)


def _storage(kind: str, request: pytest.FixtureRequest, tmp_path) -> str:
    if kind == "postgresql":
        return request.getfixturevalue("pg")
    if kind == "redis":
        return request.getfixturevalue("redis_url")
    return str(tmp_path / "journal.log")


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("postgresql", marks=pytest.mark.services),
        "journal file",
        pytest.param("redis", marks=pytest.mark.services),
    ],
)
class TestLastSlotRace:
    """N workers that all see `n_trials - 1` finished trials at the same moment: exactly one trial runs."""

    def test_one_trial_fills_the_last_slot(self, kind, request, tmp_path, study_name):
        storage = _storage(kind, request, tmp_path)
        n_trials, n_workers = 4, 3
        seed = optuna.create_study(study_name=study_name, storage=open_storage(storage, str(tmp_path)).storage)
        for x in range(n_trials - 1):
            seed.add_trial(optuna.create_trial(params={"x": float(x)}, distributions={"x": _X}, value=float(x)))

        barrier = threading.Barrier(n_workers)
        ran = [0] * n_workers
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            try:
                # Each worker opens its own storage, as a separate process would (own connection, own lock session).
                opened = open_storage(storage, str(tmp_path), heartbeat_interval=1)
                study = optuna.load_study(study_name=study_name, storage=opened.storage)
                barrier.wait(timeout=30)
                ran[i] = run_trials(
                    study,
                    _slow_objective,
                    n_trials=n_trials,
                    lock=opened.make_lock(study_name),
                    heartbeat_interval=opened.heartbeat_interval,
                )
            except BaseException as err:  # noqa: BLE001 - reported by the test
                errors.append(err)

        _run_threads(worker, n_workers, timeout=120)
        assert not errors, errors
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage, str(tmp_path)).storage)
        assert sum(ran) == 1
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * n_trials


_X = optuna.distributions.FloatDistribution(0.0, 10.0)


def _slow_objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0.0, 10.0)
    time.sleep(0.5)  # long enough that every other worker counts while this trial is RUNNING
    return x


def _run_threads(target: Callable[[int], None], n: int, timeout: float) -> None:
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(timeout=max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"workers still running after {timeout} s"


@pytest.mark.services
class TestFailedTrialIsReplaced:
    def test_a_waiting_worker_runs_the_replacement_of_a_trial_that_failed_elsewhere(self, pg, tmp_path, study_name):
        """Worker A's last trial fails while B waits for it: B runs its replacement, the study still ends at n_trials."""
        n_trials = 3
        opened = open_storage(pg, str(tmp_path), heartbeat_interval=1)
        study = optuna.create_study(study_name=study_name, storage=opened.storage)
        for x in range(n_trials - 1):
            study.add_trial(optuna.create_trial(params={"x": float(x)}, distributions={"x": _X}, value=float(x)))
        started = threading.Event()

        def failing(trial: optuna.Trial) -> float:
            trial.suggest_float("x", 0.0, 10.0)
            started.set()
            time.sleep(1.5)
            raise RuntimeError("this trial fails")

        ran: dict[str, int] = {}
        errors: list[BaseException] = []

        def a() -> None:
            # A's failure is not caught: A stops, as a worker does when its trial raises.
            try:
                run_trials(
                    optuna.load_study(study_name=study_name, storage=opened.storage),
                    failing,
                    n_trials=n_trials,
                    lock=opened.make_lock(study_name),
                    heartbeat_interval=1,
                )
            except RuntimeError as err:
                errors.append(err)

        def b() -> None:
            started.wait(timeout=30)
            own = open_storage(pg, str(tmp_path), heartbeat_interval=1)
            ran["b"] = run_trials(
                optuna.load_study(study_name=study_name, storage=own.storage),
                _slow_objective,
                n_trials=n_trials,
                lock=own.make_lock(study_name),
                heartbeat_interval=1,
            )

        threads = [threading.Thread(target=f, daemon=True) for f in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        assert [str(e) for e in errors] == ["this trial fails"]
        states = [t.state for t in optuna.load_study(study_name=study_name, storage=opened.storage).trials]
        assert states == [TrialState.COMPLETE] * 2 + [TrialState.FAIL, TrialState.COMPLETE]
        assert ran["b"] == 1


@pytest.mark.processes
@pytest.mark.parametrize("kind", [pytest.param("postgresql", marks=pytest.mark.services), "journal file"])
class TestThreeWorkerProcesses:
    def test_three_workers_share_one_grid_study(self, kind, request, tmp_path, study_name):
        storage = _storage(kind, request, tmp_path)
        n_trials = 6
        procs = []
        started = time.monotonic()
        for i in range(3):
            spec = {
                "output_dir": str(tmp_path / f"worker-{i}"),  # each worker its own run directories
                "storage": storage,
                "study_name": study_name,
                "n_trials": n_trials,  # every worker is given the study's total
                "heartbeat_interval": 2,
                "sampler": "grid",
                "pruner": "none",
                "max_steps": 4,
                "hp_space": GRID,
                "_test": {"trial_sleep": 1.0},
            }
            procs.append((start_worker(spec, tmp_path / f"worker-{i}.log"), tmp_path / f"worker-{i}.log"))
        results = wait_all(procs, timeout=240)
        elapsed = time.monotonic() - started

        study = optuna.load_study(study_name=study_name, storage=open_storage(storage, str(tmp_path)).storage)
        trials = study.trials
        assert [t.state for t in trials] == [TrialState.COMPLETE] * n_trials  # exactly n_trials, nothing lost
        params = [tuple(sorted(t.params.items())) for t in trials]
        assert len(set(params)) == n_trials  # every grid point once
        assert sum(r["ran"] for r in results) == n_trials  # no trial run twice
        if kind == "postgresql":
            # With heartbeats a worker waits for the trials running elsewhere, so every worker ends seeing the total.
            assert all(r["finished"] == n_trials for r in results)
        else:
            # A journal has no heartbeat: a worker stops once running trials elsewhere fill the budget.
            assert all(r["finished"] <= n_trials for r in results)
        workers = {t.user_attrs["worker"] for t in trials}
        assert len(workers) >= 2, f"the trials did not overlap: {workers}"
        print(f"3 workers on {kind}: {elapsed:.1f} s, trials per worker {[r['ran'] for r in results]}")


class TestRunTrialsLoop:
    """The loop on its own, on the in-memory storage: budget, Study.stop(), timeout."""

    def _study(self, finished: int) -> optuna.Study:
        study = optuna.create_study()
        for x in range(finished):
            study.add_trial(optuna.create_trial(params={"x": float(x)}, distributions={"x": _X}, value=float(x)))
        return study

    def _run(self, study: optuna.Study, n_trials: int, **kwargs) -> int:
        return run_trials(study, lambda t: t.suggest_float("x", 0, 10), n_trials=n_trials, lock=local_lock(), **kwargs)

    def test_runs_the_difference_and_nothing_on_a_finished_study(self):
        study = self._study(2)
        with capture_logs() as logs:
            assert self._run(study, 5) == 3
            assert self._run(study, 5) == 0
        assert len(study.trials) == 5
        assert "has 5 finished trials of n_trials=5: done (this worker ran 0)" in logs.text

    def test_failed_trials_do_not_count(self):
        study = self._study(0)
        calls = []

        def sometimes_fails(trial: optuna.Trial) -> float:
            calls.append(trial.number)
            if trial.number == 1:
                raise RuntimeError("boom")
            return trial.suggest_float("x", 0, 10)

        run_trials(study, sometimes_fails, n_trials=3, lock=local_lock(), catch=(RuntimeError,))
        assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]

    def test_study_stop_from_a_callback_ends_the_loop(self):
        study = self._study(0)
        stop_after_two = optuna.study.MaxTrialsCallback(2)
        assert self._run(study, 10, callbacks=[stop_after_two]) == 2

    def test_an_exhausted_grid_ends_the_loop(self):
        # GridSampler calls study.stop() from inside Optuna once every point ran: no callback sees it.
        study = optuna.create_study(sampler=optuna.samplers.GridSampler({"x": [1.0, 2.0]}))
        assert self._run(study, 10) == 2

    def test_the_caller_can_request_the_stop(self):
        study = self._study(0)
        stop = StopRequest()

        def objective(trial: optuna.Trial) -> float:
            stop.request()
            return trial.suggest_float("x", 0, 10)

        assert run_trials(study, objective, n_trials=10, lock=local_lock(), stop=stop) == 1

    def test_stop_flag_is_where_study_stop_records_it(self):
        # workers.stop_requested reads Optuna's private Study._stop_flag (no public accessor): fail loudly if it moves.
        study = self._study(0)
        study.optimize(lambda t: (study.stop(), t.suggest_float("x", 0, 10))[1], n_trials=1)
        assert study._stop_flag is True

    def test_pruned_trials_count(self):
        study = self._study(0)

        def pruned(trial: optuna.Trial) -> float:
            raise optuna.TrialPruned()

        assert run_trials(study, pruned, n_trials=2, lock=local_lock()) == 2
        assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]


class TestAnInterruptAnywhereInATurn:
    """Ctrl-C or SIGTERM outside the objective's own handling (in Optuna's `ask`, in its `tell`, in an objective that
    does not queue its trial itself) leaves no trial RUNNING and loses no grid point; a result already measured is
    recorded."""

    GRID = {"x": [1.0, 2.0, 3.0, 4.0]}

    def _grid_study(self, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
        return optuna.create_study(sampler=sampler or optuna.samplers.GridSampler(self.GRID, seed=0))

    @staticmethod
    def _objective(trial: optuna.Trial) -> float:
        return trial.suggest_float("x", 1.0, 4.0)

    def _continue_to_the_end(self, study: optuna.Study) -> None:
        run_trials(study, self._objective, n_trials=4, lock=local_lock())
        complete = study.get_trials(states=(TrialState.COMPLETE,))
        assert sorted(t.params["x"] for t in complete) == self.GRID["x"]  # every grid point once
        assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))

    def test_in_ask_the_new_trial_is_failed_and_queued_again(self):
        class InterruptedInAsk(optuna.samplers.GridSampler):
            def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
                super().before_trial(study, trial)  # the trial exists and has its grid point
                if trial.number == 1:
                    raise KeyboardInterrupt

        study = self._grid_study(InterruptedInAsk(self.GRID, seed=0))
        with pytest.raises(KeyboardInterrupt):
            run_trials(study, self._objective, n_trials=4, lock=local_lock())
        assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "WAITING"]
        assert study.trials[2].system_attrs["grid_id"] == study.trials[1].system_attrs["grid_id"]
        study.sampler = optuna.samplers.GridSampler(self.GRID, seed=0)
        self._continue_to_the_end(study)

    @pytest.mark.parametrize("ends", ["returned", "pruned"])
    def test_in_tell_what_the_objective_measured_is_recorded(self, monkeypatch, ends):
        # Optuna's one-trial loop tells through this private function; fail loudly if it moves.
        from optuna.study import _optimize

        real_tell = _optimize._tell_with_warning
        cut: list[int] = []

        def cut_tell(**kwargs: Any) -> Any:
            if kwargs["trial"].number == 1 and not cut:
                cut.append(1)
                raise KeyboardInterrupt
            return real_tell(**kwargs)

        monkeypatch.setattr(_optimize, "_tell_with_warning", cut_tell)

        def objective(trial: optuna.Trial) -> float:
            x = self._objective(trial)
            trial.report(x, step=1)
            if ends == "pruned" and trial.number == 1:
                raise optuna.TrialPruned()
            return x

        study = self._grid_study()
        with pytest.raises(KeyboardInterrupt):
            run_trials(study, objective, n_trials=4, lock=local_lock())
        assert cut == [1]
        second = study.trials[1]
        assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE" if ends == "returned" else "PRUNED"]
        assert second.value == second.params["x"]  # the value it returned, or its last report when pruned
        monkeypatch.undo()
        study.sampler = optuna.samplers.GridSampler(self.GRID, seed=0)
        if ends == "returned":
            self._continue_to_the_end(study)

    @pytest.mark.parametrize("queues_itself", [False, True])
    def test_an_interrupted_objective_has_its_trial_queued_once(self, queues_itself):
        # False: an objective that leaves the queueing to Optuna's FAIL (none happens there); True: one that queues its
        # trial itself, as the search does, so the loop must not queue a second copy.
        def interrupted_objective(trial: optuna.Trial) -> float:
            x = self._objective(trial)
            if trial.number == 1:
                if queues_itself:
                    requeue(trial.study, trial.number)
                raise KeyboardInterrupt
            return x

        study = self._grid_study()
        with pytest.raises(KeyboardInterrupt):
            run_trials(study, interrupted_objective, n_trials=4, lock=local_lock())
        assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "WAITING"]
        assert study.trials[2].params == study.trials[1].params
        self._continue_to_the_end(study)


class TestGridPointThatFails:
    """A grid point whose trial fails with a caught error is named at the end of the search (GridSampler counts it
    as run, so the search would otherwise end with it silently missing)."""

    GRID = {"x": [1.0, 2.0, 3.0]}

    def _run(self, objective: Callable[[optuna.Trial], float]) -> tuple[optuna.Study, str]:
        study = optuna.create_study(sampler=optuna.samplers.GridSampler(self.GRID, seed=0))
        with capture_logs(level=logging.WARNING) as logs:
            run_trials(study, objective, n_trials=3, lock=local_lock(), catch=(RuntimeError,))
        return study, logs.text

    @pytest.mark.parametrize("fault", ["error", OOM_FAULT])
    def test_a_failed_point_is_named_at_the_end(self, fault):
        def fails_at_2(trial: optuna.Trial) -> float:
            x = trial.suggest_float("x", 0, 10)
            if x == 2.0:
                trial.set_user_attr("fault", fault)  # as training/faults.py records the caught error
                raise RuntimeError("boom")
            return x

        study, logs = self._run(fails_at_2)
        states = sorted((t.state.name, t.params["x"]) for t in study.trials)
        assert states == [("COMPLETE", 1.0), ("COMPLETE", 3.0), ("FAIL", 2.0)]  # not retried
        (failed,) = [t.number for t in study.trials if t.state == TrialState.FAIL]
        assert (
            f"grid point {{'x': 2.0}} never completed: its trial(s) {failed} failed; the search ends without it"
            in logs
        )

    def test_a_point_completed_after_a_failure_is_not_named(self):
        # A point that failed (a killed worker's trial, FAIL) and was queued again and completed is complete.
        study = optuna.create_study(sampler=optuna.samplers.GridSampler(self.GRID, seed=0))
        seen: list[float] = []

        def fails_first_time_at_2(trial: optuna.Trial) -> float:
            x = trial.suggest_float("x", 0, 10)
            if x == 2.0 and not seen:
                seen.append(x)
                study.enqueue_trial({"x": 2.0})  # what the requeue of an interrupted trial does
                raise RuntimeError("interrupted")
            return x

        with capture_logs(level=logging.WARNING) as logs:
            run_trials(study, fails_first_time_at_2, n_trials=3, lock=local_lock(), catch=(RuntimeError,))
        assert sorted(t.params["x"] for t in study.trials if t.state == TrialState.COMPLETE) == [1.0, 2.0, 3.0]
        assert "never completed" not in logs.text

    def test_a_grid_search_of_the_trainer_names_its_failed_point(self, tmp_path):
        from transformers import TrainerCallback

        from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
        from tests.support import base_args, compute_metrics, make_dataset, tiny_model

        class FailsAt2e3(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if args.learning_rate == 2e-3 and state.global_step == 2:
                    raise ValueError("failure")

        grid = {"learning_rate": {"type": "categorical", "choices": [1e-3, 2e-3, 3e-3]}}
        args = OptunaTrainingArguments(
            **base_args(tmp_path, hp_space=grid, sampler={"name": "grid", "seed": 0}, pruner="none", max_steps=4)
        )
        trainer = OptunaTrainer(
            model_init=tiny_model,
            args=args,
            train_dataset=make_dataset(32),
            eval_dataset=make_dataset(16, seed=1),
            compute_metrics=compute_metrics,
            callbacks=[FailsAt2e3()],
        )
        with capture_logs(level=logging.WARNING) as logs:
            trainer.hyperparameter_search(catch=(ValueError,))
        done = sorted(t.params["learning_rate"] for t in trainer.study.trials if t.state == TrialState.COMPLETE)
        assert done == [1e-3, 3e-3]
        (failed,) = [t.number for t in trainer.study.trials if t.state == TrialState.FAIL]
        assert f"grid point {{'learning_rate': 0.002}} never completed: its trial(s) {failed} failed" in logs.text
