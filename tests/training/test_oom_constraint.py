"""Out of memory as an Optuna constraint: the trial is recorded infeasible (PRUNED, constraint out_of_memory=1.0) and
TPE learns to avoid its region (training/faults.py `record_infeasible`; tests/oom_standin.py for the stand-in)."""

from __future__ import annotations

import json
import logging

import optuna
import pytest
import torch
from optuna.trial import TrialState

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from optuna_trainer.output.report import format_summary, summarize
from optuna_trainer.search.settings import resolve_settings
from optuna_trainer.space.samplers import build_sampler, infeasible_constraints
from optuna_trainer.training.faults import OOM_CONSTRAINT, trial_failure
from tests.oom_standin import HALF_LIMIT, N_STARTUP, after_startup, infeasible_share, memory_bound_model, run_search
from tests.support import base_args, capture_logs, make_dataset


def test_the_stand_in_space_is_half_infeasible():
    assert abs(infeasible_share(HALF_LIMIT) - 0.5) < 0.01


class TestTrialFailure:
    def test_oom_with_oom_infeasible_is_a_pruned_trial_with_a_constraint(self):
        study = optuna.create_study()
        trial = study.ask()
        err = trial_failure(trial, torch.OutOfMemoryError("CUDA out of memory."), True, oom_infeasible=True)
        assert isinstance(err, optuna.TrialPruned)
        study.tell(trial, state=TrialState.PRUNED)
        frozen = study.trials[0]
        assert frozen.constraints == {OOM_CONSTRAINT: 1.0}
        assert frozen.user_attrs["infeasible"] == "out_of_memory"
        assert frozen.user_attrs["fault"] == "out_of_memory"
        assert frozen.user_attrs["fail_reason"].startswith("OutOfMemoryError: CUDA out of memory")
        assert infeasible_constraints(frozen) == (1.0,)

    def test_other_errors_and_oom_infeasible_false_set_no_constraint(self):
        study = optuna.create_study()
        trial = study.ask()
        err = trial_failure(trial, torch.OutOfMemoryError("CUDA out of memory."), True, oom_infeasible=False)
        assert not isinstance(err, optuna.TrialPruned)
        other = study.ask()
        boom = ValueError("boom")
        assert trial_failure(other, boom, True, oom_infeasible=True) is boom
        for t in (trial, other):
            study.tell(t, state=TrialState.FAIL)
        assert [t.constraints for t in study.trials] == [{}, {}]
        assert [infeasible_constraints(t) for t in study.trials] == [(0.0,), (0.0,)]

    def test_samplers_read_the_constraint_without_a_constraints_func_on_optuna_5(self):
        # On optuna 5 the constraint is the trial's own (Trial.set_constraint): no deprecated constraints_func.
        sampler = build_sampler("tpe")
        assert sampler._constraints_func is None  # type: ignore[attr-defined]


def _trainer(tmp_path, **overrides) -> OptunaTrainer:
    from tests.oom_standin import SPACE

    args = OptunaTrainingArguments(
        **base_args(
            tmp_path / "out",
            **{
                "hp_space": SPACE,
                "sampler": {"name": "tpe", "seed": 0},
                "pruner": "none",
                "max_steps": 1,
                "eval_strategy": "no",
                "n_trials": 4,
                **overrides,
            },
        )
    )
    return OptunaTrainer(
        model_init=memory_bound_model, args=args, train_dataset=make_dataset(32), eval_dataset=make_dataset(8, seed=1)
    )


class TestSearch:
    def test_oom_trial_is_pruned_infeasible_and_counted_apart_in_the_report(self, tmp_path):
        url = f"sqlite:///{tmp_path}/oom.db"
        trainer = _trainer(tmp_path, n_trials=2, storage=url, study_name="oom")
        # Trial 0 runs out of memory (32 x 64 > 480), trial 1 fits.
        storage = optuna.storages.RDBStorage(url)
        study = optuna.create_study(study_name="oom", storage=storage)
        study.enqueue_trial({"per_device_train_batch_size": 32, "model.seq_len": 64})
        study.enqueue_trial({"per_device_train_batch_size": 2, "model.seq_len": 8})
        trainer.hyperparameter_search(show_progress_bar=False)
        study = optuna.load_study(study_name="oom", storage=storage)
        oom, ok = study.trials
        assert (oom.state, ok.state) == (TrialState.PRUNED, TrialState.COMPLETE)
        assert oom.constraints == {OOM_CONSTRAINT: 1.0} and ok.constraints == {}
        assert oom.user_attrs["infeasible"] == "out_of_memory"
        summary = summarize(study)
        assert summary["infeasible"] == 1 and summary["states"]["PRUNED"] == 1 and summary["states"]["FAIL"] == 0
        assert "(1 of them infeasible: out of memory)" in format_summary(summary, study.trials)
        # The report written at the end says it too.
        on_disk = json.loads((tmp_path / "out" / "report" / "summary.json").read_text())
        assert on_disk["infeasible"] == 1

    def test_printed_settings_say_what_out_of_memory_does(self, tmp_path):
        for overrides, expected in (
            ({}, "recorded infeasible (PRUNED, constraint out_of_memory=1"),
            ({"oom_infeasible": False}, "the trial is FAIL; the search goes on"),
            ({"continue_on_oom": False}, "stops the search (continue_on_oom=false)"),
        ):
            args = _trainer(tmp_path, **overrides).args
            settings = resolve_settings(args, storage="memory")
            assert expected in settings.describe()["on_oom"]
            with capture_logs("optuna_trainer", level=logging.INFO) as logs:
                settings.log()
            assert expected in logs.text

    def test_oom_infeasible_is_validated(self, tmp_path):
        with pytest.raises(ValueError, match="oom_infeasible: must be true or false"):
            OptunaTrainingArguments(**base_args(tmp_path, oom_infeasible="yes"))

    def test_tpe_avoids_the_infeasible_half_of_the_space(self, tmp_path):
        # 30 trials of TPE (seed 0) where half of the space runs out of memory: after the 10 startup trials at most a
        # third fall there. Without the constraint (FAIL trials, which TPE ignores) the same search puts more than
        # half of them there (benchmarks/oom_constraint.py, docs/benchmarks.md figure 12).
        study = run_search(str(tmp_path / "with"), oom_infeasible=True, n_trials=30, seed=0)
        assert len(study.trials) == 30
        later, in_region = after_startup(study, 30)
        assert later == 30 - N_STARTUP
        assert in_region <= later / 3, in_region
        pruned = study.get_trials(states=(TrialState.PRUNED,))
        assert pruned and all(t.constraints == {OOM_CONSTRAINT: 1.0} for t in pruned)
