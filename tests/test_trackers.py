"""Per-trial runs in MLflow (a local SQLite tracking store) and W&B (offline), grouped under the study."""

from __future__ import annotations

import glob
import os

import optuna
import pytest

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from optuna_trainer.testing import base_args, make_dataset, read_wandb_offline_run, tiny_model

LR_SPACE = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
REQUIRED = os.environ.get("OPTUNA_TRAINER_REQUIRE_SERVICES") == "1"


def need(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        if REQUIRED:
            pytest.fail(f"{module} is not installed (OPTUNA_TRAINER_REQUIRE_SERVICES=1): pip install -e '.[trackers]'")
        pytest.skip(f"{module} is not installed: pip install -e '.[trackers]'")


def three_trial_trainer(out_dir, report_to, storage="memory"):
    """Trial 0 completes (4 evaluations), trial 1 fails before training, trial 2 is pruned at its first evaluation."""
    trainer = None

    def metrics(pred):
        return {"accuracy": 0.9 if trainer.args.output_dir.endswith("run-0") else 0.1}

    def model_init(trial=None):
        if trainer is not None and trainer.args.output_dir.endswith("run-1"):
            raise RuntimeError("no model for trial 1")
        return tiny_model()

    trainer = OptunaTrainer(
        model_init=model_init,
        args=OptunaTrainingArguments(
            **base_args(
                out_dir,
                report_to=report_to,
                n_trials=2,
                hp_space=LR_SPACE,
                pruner={"name": "threshold", "lower": 0.5},
                storage=storage,
            )
        ),
        train_dataset=make_dataset(32),
        eval_dataset=make_dataset(16, 1),
        compute_metrics=metrics,
    )
    return trainer


def test_mlflow_one_nested_run_per_trial_under_the_study(out_dir, tmp_path, monkeypatch):
    need("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    storage = f"sqlite:///{tmp_path}/study.db"
    trainer = three_trial_trainer(out_dir, ["mlflow"], storage)
    trainer.hyperparameter_search(n_trials=2, catch=(RuntimeError,))
    study = trainer.study
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "PRUNED"]

    client = MlflowClient()
    runs = client.search_runs(experiment_ids=["0"])
    (parent,) = [r for r in runs if r.info.run_name == study.study_name]
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    trials = {int(r.data.tags["optuna.trial_number"]): r for r in runs if r is not parent}
    assert sorted(trials) == [0, 1, 2]
    for number, run in trials.items():
        frozen = study.trials[number]
        assert run.info.run_name == f"trial-{number}"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["optuna.state"] == frozen.state.name
        assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[frozen.state.name]
        reported = client.get_metric_history(run.info.run_id, "optuna.intermediate")
        assert {m.step: m.value for m in reported} == frozen.intermediate_values
        # Each trial's own evaluations only: nothing logged into the run of the trial before (transformers #11944).
        evals = client.get_metric_history(run.info.run_id, "eval_accuracy")
        assert len(evals) == {0: 4, 1: 0, 2: 1}[number]
        if "learning_rate" in frozen.params:
            assert float(run.data.tags["optuna.param.learning_rate"]) == pytest.approx(frozen.params["learning_rate"])
    assert trials[0].data.metrics["optuna.value"] == study.trials[0].value == 0.9
    assert "no model for trial 1" in trials[1].data.tags["optuna.reason"]

    # The study continues: its trials join the same parent run.
    trainer = three_trial_trainer(out_dir, ["mlflow"], storage)
    trainer.hyperparameter_search(n_trials=3, catch=(RuntimeError,))
    runs = client.search_runs(experiment_ids=["0"])
    assert sum(r.info.run_name == study.study_name for r in runs) == 1
    assert len(runs) == 1 + len(trainer.study.trials)


def test_wandb_offline_one_run_per_trial_in_the_studys_group(out_dir, tmp_path, monkeypatch):
    need("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    trainer = three_trial_trainer(out_dir, ["wandb"])
    trainer.hyperparameter_search(n_trials=2, catch=(RuntimeError,))
    study = trainer.study
    runs = [read_wandb_offline_run(f) for f in glob.glob(f"{tmp_path}/wandb/offline-run-*/run-*.wandb")]
    by_number = {run["summary"]["optuna/trial_number"]: run for run in runs}
    assert len(runs) == 3 and sorted(by_number) == [0, 1, 2]
    for number, run in by_number.items():
        frozen = study.trials[number]
        assert run["name"] == f"trial-{number}" and run["group"] == study.study_name
        assert run["summary"]["optuna/state"] == frozen.state.name
        assert run["exit_code"] == (1 if frozen.state == optuna.trial.TrialState.FAIL else 0)
        reported = {row["optuna/step"]: row["optuna/intermediate"] for row in run["history"] if "optuna/step" in row}
        assert reported == frozen.intermediate_values
        evals = [row for row in run["history"] if "eval/accuracy" in row]
        assert len(evals) == {0: 4, 1: 0, 2: 1}[number]  # no trial's evaluations in another trial's run
    assert by_number[0]["summary"]["optuna/value"] == 0.9
