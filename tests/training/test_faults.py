"""Faults inside trials: out of memory, other exceptions, NaN/inf losses and objectives, nothing finished."""

from __future__ import annotations

import gc
import logging
import math
import os
import weakref
from typing import Any

import optuna
import pytest
import torch
from transformers import BertForSequenceClassification, TrainerCallback, TrainerControl, TrainerState

from optuna_trainer import NoCompletedTrialError, OptunaTrainer, OptunaTrainingArguments
from optuna_trainer.exceptions import TrialOutOfMemoryError
from optuna_trainer.training.callbacks import NonFiniteLossCallback
from optuna_trainer.training.faults import is_out_of_memory
from tests.support import base_args, compute_metrics, make_dataset, tiny_config

BATCH_SPACE = {"per_device_train_batch_size": {"type": "categorical", "choices": [4, 8, 16]}}
GRID = {"name": "grid", "seed": 0}


class RaiseAt(TrainerCallback):
    """Raises `make()` at the end of training step `step` in every trial whose arguments match `when`."""

    def __init__(self, step: int, make: Any, when: Any = lambda args: True) -> None:
        self.step, self.make, self.when = step, make, when
        self.raised = 0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and self.when(args):
            self.raised += 1
            raise self.make()


class Recorder:
    """A `model_init` that keeps a weak reference to every model it builds."""

    def __init__(self, model_class: type = BertForSequenceClassification, **config: Any) -> None:
        self.model_class, self.config = model_class, config
        self.models: list[weakref.ref] = []

    def __call__(self, trial: Any = None) -> torch.nn.Module:
        model = self.model_class(tiny_config(**self.config))
        self.models.append(weakref.ref(model))
        return model


def make_trainer(tmp_path, callbacks=(), model_init=None, metrics=compute_metrics, **overrides) -> OptunaTrainer:
    args = OptunaTrainingArguments(**base_args(tmp_path / "out", **{"max_steps": 4, **overrides}))
    return OptunaTrainer(
        model_init=model_init or Recorder(),
        args=args,
        train_dataset=make_dataset(64),
        eval_dataset=make_dataset(32, seed=1),
        compute_metrics=metrics,
        callbacks=list(callbacks),
    )


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.trials]


def checkpoints(run_dir: str) -> list[str]:
    if not os.path.isdir(run_dir):
        return []
    return [n for n in os.listdir(run_dir) if n.startswith("checkpoint-")]


def assert_no_nan_reported(study: optuna.Study) -> None:
    for t in study.trials:
        if t.value is not None:
            assert math.isfinite(t.value), (t.number, t.value)
        for step, v in t.intermediate_values.items():
            assert math.isfinite(v), (t.number, step, v)


class TestIsOutOfMemory:
    @pytest.mark.parametrize(
        "err",
        [
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
            torch.cuda.OutOfMemoryError("anything"),
            RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 79.35 GiB total capacity)"),
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:114] . DefaultCPUAllocator: can't allocate memory: you tried"
            ),
            RuntimeError("MPS backend out of memory (MPS allocated: 1.2 GB)"),
            RuntimeError("HIP out of memory"),
        ],
        ids=["torch_oom", "cuda_oom_class", "cuda_message", "cpu_allocator", "mps", "hip_other_wording"],
    )
    def test_out_of_memory(self, err):
        assert is_out_of_memory(err)

    @pytest.mark.parametrize(
        "err",
        [
            RuntimeError("CUDA error: device-side assert triggered"),
            ValueError("out of memory"),  # not a RuntimeError: a user's own error, never swallowed
            KeyError("eval_accuracy"),
        ],
        ids=["cuda_assert", "value_error", "key_error"],
    )
    def test_other_errors(self, err):
        assert not is_out_of_memory(err)


class TestOutOfMemory:
    def test_oom_trial_fails_and_search_goes_on(self, tmp_path):
        recorder = Recorder()
        oom = RaiseAt(
            3,
            lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
            when=lambda args: args.per_device_train_batch_size == 16,
        )
        alive_after_oom: list[bool] = []

        def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            if trial.state == optuna.trial.TrialState.FAIL:
                # gc_after_trial=False and the collector off: only the search's own release can have freed it.
                alive_after_oom.append(recorder.models[-1]() is not None)
                assert checkpoints(trial.user_attrs["run_dir"]) == []

        trainer = make_trainer(
            tmp_path,
            [oom],
            recorder,
            hp_space=BATCH_SPACE,
            sampler=GRID,
            pruner="none",
            save_strategy="steps",
            save_steps=2,
            oom_infeasible=False,  # the FAIL path; the default (infeasible) is in test_oom_constraint.py
        )
        gc.disable()
        try:
            best = trainer.hyperparameter_search(gc_after_trial=False, callbacks=[after_trial])
        finally:
            gc.enable()
        study = trainer.study
        assert oom.raised == 1
        assert sorted(states(study)) == ["COMPLETE", "COMPLETE", "FAIL"]
        failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))[0]
        assert failed.params == {"per_device_train_batch_size": 16}
        assert failed.user_attrs["fault"] == "out_of_memory"
        assert failed.user_attrs["fail_reason"].startswith("OutOfMemoryError: CUDA out of memory")
        assert alive_after_oom == [False]
        assert int(best.run_id) != failed.number
        assert best.hyperparameters["per_device_train_batch_size"] in (4, 8)

    def test_oom_message_in_a_plain_runtime_error(self, tmp_path):
        oom = RaiseAt(
            2, lambda: RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), lambda a: a.seed == 0
        )
        trainer = make_trainer(
            tmp_path,
            [oom],
            hp_space={"seed": {"type": "categorical", "choices": [0, 1]}},
            sampler=GRID,
            pruner="none",
            oom_infeasible=False,
        )
        trainer.hyperparameter_search()
        failed = trainer.study.get_trials(states=(optuna.trial.TrialState.FAIL,))
        assert [t.params["seed"] for t in failed] == [0]
        assert failed[0].user_attrs["fault"] == "out_of_memory"
        assert len(trainer.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 1

    def test_continue_on_oom_false_stops_the_search(self, tmp_path):
        oom = RaiseAt(3, lambda: torch.OutOfMemoryError("CUDA out of memory."), lambda a: a.seed == 1)
        trainer = make_trainer(
            tmp_path,
            [oom],
            hp_space={"seed": {"type": "categorical", "choices": [0, 1, 2]}},
            sampler=GRID,
            pruner="none",
            continue_on_oom=False,
            n_trials=3,
        )
        with pytest.raises(torch.OutOfMemoryError, match="CUDA out of memory"):
            trainer.hyperparameter_search()
        study = trainer.study
        assert states(study)[-1] == "FAIL"
        assert study.trials[-1].params == {"seed": 1}
        assert study.trials[-1].user_attrs["fault"] == "out_of_memory"
        assert len(study.trials) < 3  # nothing ran after the OOM
        assert trainer.model is not None  # the trainer is restored for train()/evaluate() after the error

    def test_continue_on_oom_is_validated(self, tmp_path):
        with pytest.raises(ValueError, match="continue_on_oom: must be true or false"):
            OptunaTrainingArguments(**base_args(tmp_path, continue_on_oom="yes"))


class TestOtherExceptions:
    def test_an_error_fails_the_trial_and_stops_the_search(self, tmp_path):
        boom = RaiseAt(2, lambda: ValueError("boom in trial"), lambda a: a.seed == 1)
        trainer = make_trainer(
            tmp_path,
            [boom],
            hp_space={"seed": {"type": "categorical", "choices": [0, 1, 2]}},
            sampler={"name": "grid", "search_space": {"seed": [0, 1, 2]}},
            pruner="none",
        )
        # Grid order is shuffled by its seed: run until seed 1 comes up; everything finished before it stays.
        with pytest.raises(ValueError, match="boom in trial"):
            trainer.hyperparameter_search()
        study = trainer.study
        assert states(study)[-1] == "FAIL"
        assert set(states(study)[:-1]) <= {"COMPLETE"}
        assert study.trials[-1].user_attrs["fail_reason"] == "ValueError: boom in trial"
        assert study.trials[-1].user_attrs["fault"] == "error"
        assert all(t.value is not None for t in study.trials[:-1])

    def test_catch_lets_the_search_go_on(self, tmp_path):
        boom = RaiseAt(2, lambda: ValueError("boom in trial"), lambda a: a.seed == 1)
        trainer = make_trainer(
            tmp_path,
            [boom],
            hp_space={"seed": {"type": "categorical", "choices": [0, 1, 2]}},
            sampler=GRID,
            pruner="none",
        )
        trainer.hyperparameter_search(catch=(ValueError,))
        assert sorted(states(trainer.study)) == ["COMPLETE", "COMPLETE", "FAIL"]

    def test_a_caught_error_releases_its_trial_before_the_next(self, tmp_path):
        # The traceback's frames hold the trial's model, optimizer and batches, and Optuna keeps the exception in a
        # reference cycle (its frame -> the exception -> the traceback -> its frame) that only a collection frees.
        recorder = Recorder()
        boom = RaiseAt(2, lambda: ValueError("boom in trial"), lambda a: a.seed == 1)
        alive_after_failure: list[bool] = []
        logged: list[str] = []

        def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            if trial.state == optuna.trial.TrialState.FAIL:
                alive_after_failure.append(recorder.models[-1]() is not None)

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                logged.append(self.format(record) if record.exc_info else record.getMessage())

        handler = Keep()
        optuna_logger = logging.getLogger("optuna")
        optuna_logger.addHandler(handler)
        space = {"seed": {"type": "categorical", "choices": [0, 1, 2]}}
        trainer = make_trainer(tmp_path, [boom], recorder, hp_space=space, sampler=GRID, pruner="none")
        gc.disable()
        try:
            trainer.hyperparameter_search(catch=(ValueError,), gc_after_trial=False, callbacks=[after_trial])
        finally:
            gc.enable()
            optuna_logger.removeHandler(handler)
        assert alive_after_failure == [False]
        failed = trainer.study.get_trials(states=(optuna.trial.TrialState.FAIL,))
        assert [t.user_attrs["fail_reason"] for t in failed] == ["ValueError: boom in trial"]
        # Optuna still logs where it failed: clearing frames drops their variables, not the traceback's lines.
        failure_logs = [m for m in logged if "boom in trial" in m and "Traceback" in m]
        assert failure_logs and "in on_step_end" in failure_logs[0]

    def test_an_error_that_stops_the_search_keeps_its_frames(self, tmp_path):
        # Not caught: the user gets the traceback with every frame's variables, for a debugger's post-mortem.
        boom = RaiseAt(2, lambda: ValueError("boom in trial"))
        trainer = make_trainer(
            tmp_path, [boom], hp_space={"seed": {"type": "categorical", "choices": [0]}}, sampler=GRID, pruner="none"
        )
        with pytest.raises(ValueError, match="boom in trial") as info:
            trainer.hyperparameter_search()
        tb = info.value.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        assert tb.tb_frame.f_code.co_name == "on_step_end" and "state" in tb.tb_frame.f_locals


class NaNAfter(BertForSequenceClassification):
    """Returns a NaN training loss from its `config.nan_after`-th training forward on (never when it is < 0)."""

    def __init__(self, config):
        super().__init__(config)
        self.training_calls = 0

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        if self.training:
            self.training_calls += 1
            if 0 <= self.config.nan_after < self.training_calls:
                out.loss = out.loss * float("nan")
        return out


class TestNonFinite:
    def test_nan_training_loss_ends_the_trial_as_pruned(self, tmp_path):
        steps_seen: list[int] = []

        class Steps(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                steps_seen.append(state.global_step)

        trainer = make_trainer(
            tmp_path,
            [Steps()],
            Recorder(NaNAfter, nan_after=-1),
            hp_space={"model.nan_after": {"type": "categorical", "choices": [-1, 2]}},
            sampler=GRID,
            pruner="none",
            n_trials=2,
            max_steps=8,
            eval_steps=4,
            logging_steps=4,
        )
        trainer.hyperparameter_search()
        study = trainer.study
        by_nan = {t.params["model.nan_after"]: t for t in study.trials}
        diverged = by_nan[2]
        assert diverged.state == optuna.trial.TrialState.PRUNED
        # The third step's loss is NaN: the trial stops at step 3 instead of training on to max_steps=8.
        assert diverged.user_attrs["pruned_at_step"] == 3
        assert diverged.user_attrs["steps"] == 3
        assert "training loss is not finite at step 3" in diverged.user_attrs["stopped_reason"]
        assert by_nan[-1].state == optuna.trial.TrialState.COMPLETE
        assert by_nan[-1].user_attrs["steps"] == 8
        assert_no_nan_reported(study)

    def test_nan_loss_after_an_evaluation_keeps_the_finite_intermediate_value(self, tmp_path):
        trainer = make_trainer(
            tmp_path,
            [],
            Recorder(NaNAfter, nan_after=5),
            hp_space={"seed": {"type": "categorical", "choices": [0]}},
            sampler=GRID,
            pruner="none",
            n_trials=1,
            max_steps=8,
            eval_steps=2,
            logging_steps=2,
        )
        with pytest.raises(NoCompletedTrialError, match="1 pruned, 0 failed"):
            trainer.hyperparameter_search()
        (trial,) = trainer.study.trials
        assert trial.state == optuna.trial.TrialState.PRUNED
        assert trial.user_attrs["pruned_at_step"] == 6
        assert sorted(trial.intermediate_values) == [
            16,
            32,
        ]  # samples seen at the evaluations before the divergence, all finite
        assert_no_nan_reported(trainer.study)

    def test_nan_objective_ends_the_trial_as_pruned(self, tmp_path):
        def nan_for_seed_1(pred):
            return {"accuracy": float("nan")} if trainer.args.seed == 1 else compute_metrics(pred)

        trainer = make_trainer(
            tmp_path,
            [],
            metrics=nan_for_seed_1,
            hp_space={"seed": {"type": "categorical", "choices": [0, 1]}},
            sampler=GRID,
            pruner="none",
        )
        trainer.hyperparameter_search()
        by_seed = {t.params["seed"]: t for t in trainer.study.trials}
        assert by_seed[1].state == optuna.trial.TrialState.PRUNED
        assert "objective is nan" in by_seed[1].user_attrs["stopped_reason"]
        assert by_seed[0].state == optuna.trial.TrialState.COMPLETE
        assert_no_nan_reported(trainer.study)

    @pytest.mark.parametrize(
        "logs", [{"loss": float("nan")}, {"loss": 0.5, "grad_norm": float("inf")}], ids=["loss_nan", "grad_norm_inf"]
    )
    def test_logged_non_finite_values_stop_training(self, logs):
        stops: list[str] = []
        guard = NonFiniteLossCallback(lambda state, control, reason: stops.append(reason), model=lambda: None)
        state, control = TrainerState(global_step=7), TrainerControl()
        control.should_evaluate = control.should_save = True
        guard.on_log(None, state, control, logs=logs)
        assert len(stops) == 1 and "at step 7" in stops[0]
        assert not control.should_evaluate and not control.should_save
        guard.on_log(None, state, control, logs=logs)
        assert len(stops) == 1  # decided once

    def test_finite_logs_do_not_stop(self):
        stops: list[str] = []
        guard = NonFiniteLossCallback(lambda *a: stops.append(a[2]), model=lambda: None)
        guard.on_log(None, TrainerState(global_step=2), TrainerControl(), logs={"loss": 0.7, "grad_norm": 1.5})
        guard.on_step_end(None, TrainerState(global_step=2), TrainerControl())
        assert stops == []


class TestNothingFinished:
    def test_every_trial_pruned(self, tmp_path):
        trainer = make_trainer(
            tmp_path,
            hp_space={"seed": {"type": "int", "low": 0, "high": 9}},
            pruner={"name": "threshold", "lower": 2.0},
            n_trials=3,
        )
        with pytest.raises(NoCompletedTrialError) as info:
            trainer.hyperparameter_search()
        assert "no completed trial: 3 pruned, 0 failed" in str(info.value)
        assert states(trainer.study) == ["PRUNED"] * 3

    def test_every_trial_failed(self, tmp_path):
        boom = RaiseAt(1, lambda: ValueError("always"))
        trainer = make_trainer(
            tmp_path, [boom], hp_space={"seed": {"type": "int", "low": 0, "high": 9}}, pruner="none", n_trials=3
        )
        with pytest.raises(NoCompletedTrialError) as info:
            trainer.hyperparameter_search(catch=(ValueError,))
        # failed trials do not count towards n_trials; a search that only fails stops after max(n_trials, 10) in a row
        assert "no completed trial: 0 pruned, 10 failed" in str(info.value)
        assert "fail_reason" in str(info.value)
        assert states(trainer.study) == ["FAIL"] * 10

    @pytest.mark.slow
    def test_every_trial_out_of_memory(self, tmp_path):
        oom = RaiseAt(1, lambda: torch.OutOfMemoryError("CUDA out of memory."))
        trainer = make_trainer(
            tmp_path,
            [oom],
            hp_space={"seed": {"type": "int", "low": 0, "high": 9}},
            pruner="none",
            n_trials=2,
            oom_infeasible=False,
        )
        with pytest.raises(NoCompletedTrialError, match="0 pruned, 10 failed"):
            trainer.hyperparameter_search()
        assert [t.user_attrs["fault"] for t in trainer.study.trials] == ["out_of_memory"] * 10

    def test_every_trial_out_of_memory_recorded_infeasible(self, tmp_path):
        # Infeasible trials are PRUNED and count towards n_trials: the search ends after n_trials, and says why.
        oom = RaiseAt(1, lambda: torch.OutOfMemoryError("CUDA out of memory."))
        trainer = make_trainer(
            tmp_path, [oom], hp_space={"seed": {"type": "int", "low": 0, "high": 9}}, pruner="none", n_trials=2
        )
        with pytest.raises(NoCompletedTrialError, match=r"2 pruned \(2 of them out of memory.*0 failed"):
            trainer.hyperparameter_search()
        assert [t.user_attrs["infeasible"] for t in trainer.study.trials] == ["out_of_memory"] * 2


def test_trial_out_of_memory_error_is_a_runtime_error():
    # Code that already catches RuntimeError around a search keeps working.
    assert issubclass(TrialOutOfMemoryError, RuntimeError)
