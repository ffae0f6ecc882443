"""The coordination of a multi-process search, in one process: the protocol's decisions on given exchanges, and the
trial that carries rank 0's suggestions. The real 2-process runs are in tests/processes/distributed/."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
import torch
import torch.distributed as dist
from transformers import TrainerControl, TrainerState, TrainingArguments

from optuna_trainer import OptunaPruningCallback
from optuna_trainer.exceptions import CoordinationError, PeerFailedError
from optuna_trainer.processes.coordinator import LocalCoordinator
from optuna_trainer.processes.distributed import (
    DistributedCoordinator,
    SyncTrial,
    _is_collateral,
    _portable,
    _primary,
    coordinator_for,
)

GLOO_TIMEOUT = RuntimeError(
    "[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv operation"
)


class FakeCoordinator(DistributedCoordinator):
    """A rank of a 2-process group whose exchanges return scripted records."""

    def __init__(self, rank: int, replies: list[list[tuple[Any, ...]]]) -> None:
        self.rank, self.world_size, self.is_main = rank, 2, rank == 0
        self.replies = replies
        self.sent: list[tuple[Any, ...]] = []
        self.rebuilt = 0

    def _exchange(self, record: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        self.sent.append(record)
        return self.replies.pop(0)

    def _rebuild_groups(self) -> None:
        self.rebuilt += 1


class TestDecide:
    def test_rank_0_decision_reaches_every_rank(self):
        c = FakeCoordinator(1, [[("check", 0, "pruned at step 4"), ("check", 1, None)]])
        assert c.decide(None) == "pruned at step 4"
        assert c.sent == [("check", 1, None)]

    def test_an_error_on_any_rank_wins_over_rank_0_decision(self):
        boom = ValueError("boom")
        c = FakeCoordinator(0, [[("check", 0, None), ("check", 1, boom)]])
        result = c.decide(None)
        assert isinstance(result, ValueError) and str(result) == "boom"

    def test_a_rank_that_already_left_the_trial_stops_the_others(self):
        c = FakeCoordinator(0, [[("check", 0, None), ("end", 1, ("failed", ValueError("boom")))]])
        assert str(c.decide(None)) == "boom"
        c = FakeCoordinator(0, [[("check", 0, None), ("end", 1, ("ok", 0.5))]])
        assert isinstance(c.decide(None), PeerFailedError)

    def test_rank_0_stopping_the_search_mid_trial_ends_the_follower(self):
        c = FakeCoordinator(1, [[("stop", KeyboardInterrupt()), ("check", 1, None)]])
        with pytest.raises(CoordinationError, match="stopped the search"):
            c.decide(None)


class TestRunTrial:
    def test_value_is_rank_0s(self):
        c = FakeCoordinator(1, [[("end", 0, ("ok", 0.25)), ("end", 1, ("ok", 0.26))]])
        assert c.run_trial(lambda: 0.26) == 0.25
        assert c.rebuilt == 0

    def test_pruned_on_rank_0_is_pruned_on_all(self):
        c = FakeCoordinator(1, [[("end", 0, ("pruned", "pruned at step 2")), ("end", 1, ("pruned", "x"))]])
        with pytest.raises(optuna.TrialPruned, match="pruned at step 2"):
            c.run_trial(lambda: 1.0)

    def test_failure_on_rank_1_fails_rank_0_with_rank_1s_error_and_rebuilds_the_groups(self):
        # Rank 0 timed out in the all-reduce rank 1 never joined: the cause is rank 1's error.
        c = FakeCoordinator(0, [[("end", 0, ("failed", GLOO_TIMEOUT)), ("end", 1, ("failed", ValueError("boom")))]])

        def train() -> float:
            raise GLOO_TIMEOUT

        with pytest.raises(ValueError, match="boom") as info:
            c.run_trial(train)
        assert "the trial failed on rank 1" in info.value.__notes__
        assert c.rebuilt == 1

    def test_end_exchange_repeats_until_every_rank_has_left_the_trial(self):
        c = FakeCoordinator(
            1,
            [
                [("check", 0, None), ("end", 1, ("failed", ValueError("boom")))],  # rank 0 still training
                [("end", 0, ("failed", ValueError("boom"))), ("end", 1, ("failed", ValueError("boom")))],
            ],
        )
        with pytest.raises(ValueError):
            c.run_trial(lambda: (_ for _ in ()).throw(ValueError("boom")))
        assert [r[0] for r in c.sent] == ["end", "end"]


class TestFollow:
    def test_follower_runs_trials_until_stop_and_raises_rank_0s_error(self):
        ran: list[int] = []
        error = KeyError("from rank 0")
        c = FakeCoordinator(1, [[("next", None), ("wait", None)], [("stop", error), ("wait", None)]])
        c.trial_group = None
        c.run_trial = lambda run: ran.append(1)  # type: ignore[method-assign]
        with pytest.raises(KeyError, match="from rank 0"):
            c._follow(lambda trial: None)
        assert ran == [1]


def test_primary_error_is_the_cause_not_the_timeouts():
    boom = ValueError("boom")
    assert _primary([(0, GLOO_TIMEOUT), (1, boom)]) == (1, boom)
    assert _primary([(0, PeerFailedError("x")), (1, GLOO_TIMEOUT)])[1].__class__ is PeerFailedError
    assert _is_collateral(GLOO_TIMEOUT) and not _is_collateral(boom)


def test_an_error_rank_0_raised_because_of_rank_1_is_rank_1s():
    # Rank 1 raised at an evaluation and left; rank 0 learnt it in its pruning exchange and raised a copy.
    c = FakeCoordinator(0, [[("check", 0, None), ("end", 1, ("failed", ValueError("eval boom")))]])
    copy = c.decide(None)
    assert isinstance(copy, ValueError)
    c.replies = [[("end", 0, ("failed", copy)), ("end", 1, ("failed", ValueError("eval boom")))]]

    def train() -> float:
        raise copy

    with pytest.raises(ValueError, match="eval boom") as info:
        c.run_trial(train)
    assert info.value.__notes__[-1] == "the trial failed on rank 1"


def test_unpicklable_error_is_sent_as_text():
    class Local(Exception):
        def __reduce__(self):
            raise TypeError("cannot pickle")

    sent = _portable(Local("disk full"))
    assert isinstance(sent, RuntimeError) and str(sent) == "Local: disk full"
    value = 0.1 + 0.2
    assert _portable(value) is value


def test_one_process_has_the_local_coordinator(tmp_path):
    coordinator = coordinator_for(TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    assert isinstance(coordinator, LocalCoordinator)
    assert coordinator.is_main and coordinator.world_size == 1
    assert coordinator.share(3) == 3 and coordinator.decide("pruned at step 2") == "pruned at step 2"
    assert coordinator.setup(lambda: "prepared") == "prepared" and coordinator.finish_search(lambda: 5) == 5


@pytest.fixture
def one_rank_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield dist.new_group(backend="gloo")
    finally:
        dist.destroy_process_group()


class TestSyncTrial:
    def test_suggestions_are_the_float64_the_study_records(self, one_rank_group):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        trial = SyncTrial(study.ask(), one_rank_group)
        lr = trial.suggest_float("learning_rate", 1e-5, 1e-1, log=True)
        big = trial.suggest_int("steps", 0, 2**40)
        choice = trial.suggest_categorical("batch", [16, 32])
        assert lr.hex() == trial.params["learning_rate"].hex() == study.trials[0].params["learning_rate"].hex()
        # float32 would not hold it (optuna-integration's tensor broadcast rounds to float32).
        assert lr != float(torch.tensor(lr, dtype=torch.float32))
        assert big == study.trials[0].params["steps"] and choice in (16, 32)

    def test_an_invalid_suggestion_raises(self, one_rank_group):
        trial = SyncTrial(optuna.create_study().ask(), one_rank_group)
        with pytest.raises(ValueError):
            trial.suggest_float("x", 1.0, 0.0)

    def test_attributes_report_and_prune_act_on_rank_0s_trial(self, one_rank_group):
        study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1.0))
        real = study.ask()
        trial = SyncTrial(real, one_rank_group)
        trial.set_user_attr("run_dir", "out/run-0")
        trial.report(2.0, step=1)
        assert trial.should_prune() is True
        assert real.user_attrs["run_dir"] == "out/run-0" and trial.user_attrs["run_dir"] == "out/run-0"
        assert study.trials[0].intermediate_values == {1: 2.0}


class TestCallbackDecide:
    """`OptunaPruningCallback` shares each outcome through `decide`; the same code runs in one process."""

    def _evaluate(self, callback: OptunaPruningCallback, value: float) -> TrainerControl:
        control = TrainerControl()
        state = TrainerState()
        state.global_step = 4
        callback.on_evaluate(None, state, control, metrics={"eval_loss": value})
        return control

    def test_main_process_decision_stops_a_rank_that_would_go_on(self):
        seen: list[Any] = []

        def decide(outcome: Any) -> Any:
            seen.append(outcome)
            return "pruned at step 4"

        callback = OptunaPruningCallback(None, "loss", decide=decide)
        control = self._evaluate(callback, 0.5)
        assert seen == [None]
        assert control.should_training_stop and callback.pruned_at == 4
        with pytest.raises(optuna.TrialPruned, match="pruned at step 4"):
            callback.check_pruned()

    def test_a_local_error_is_shared_and_raised(self):
        seen: list[Any] = []

        def decide(outcome: Any) -> Any:
            seen.append(outcome)
            return outcome

        callback = OptunaPruningCallback(None, "accuracy", decide=decide)
        with pytest.raises(ValueError, match="eval_accuracy"):
            self._evaluate(callback, 0.5)  # no eval_accuracy among the metrics
        assert isinstance(seen[0], ValueError)

    def test_another_ranks_error_is_raised_here(self):
        callback = OptunaPruningCallback(None, "loss", decide=lambda outcome: KeyError("rank 1"))
        with pytest.raises(KeyError, match="rank 1"):
            self._evaluate(callback, 0.5)


def test_the_private_torch_names_the_coordinator_uses_exist():
    """processes/distributed.py uses torch's `_get_default_store` (to rebuild groups on the same store) and `_set_pg_timeout`
    (gloo keeps a 30-minute default otherwise): torch has no public names for either."""
    assert callable(dist.distributed_c10d._get_default_store)
    assert callable(dist.distributed_c10d._set_pg_timeout)
