"""Search-level control: the arguments' own values as trial 0, target_value, trials_without_improvement."""

from __future__ import annotations

import optuna
import pytest

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from tests.support import base_args, capture_logs, make_dataset, tiny_model

TRAIN = make_dataset(32, 0)
EVAL = make_dataset(16, 1)
LR_SPACE = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


def scripted_trainer(out_dir, values_by_trial, **overrides):
    """A trainer whose trial N scores `values_by_trial[N]` at every evaluation."""
    trainer = None

    def metrics(pred):
        number = int(trainer.args.output_dir.rsplit("-", 1)[-1])
        return {"accuracy": values_by_trial[number]}

    trainer = OptunaTrainer(
        model_init=tiny_model,
        args=OptunaTrainingArguments(**base_args(out_dir, **{"max_steps": 4, "pruner": "none", **overrides})),
        train_dataset=TRAIN,
        eval_dataset=EVAL,
        compute_metrics=metrics,
    )
    return trainer


def test_enqueue_arguments_runs_the_users_values_first(out_dir):
    storage = f"sqlite:///{out_dir}/study.db"
    trainer = scripted_trainer(
        out_dir,
        [0.5] * 5,
        hp_space={**LR_SPACE, "weight_decay": {"type": "float", "low": 0.0, "high": 0.1}},
        learning_rate=2e-3,
        weight_decay=0.05,
        enqueue_arguments=True,
        storage=storage,
        n_trials=2,
    )
    with capture_logs("optuna_trainer") as logs:
        trainer.hyperparameter_search()
    first, second = trainer.study.trials
    assert first.params == {"learning_rate": 2e-3, "weight_decay": 0.05}
    assert first.user_attrs["enqueued"] == "arguments" and "enqueued" not in second.user_attrs
    assert "enqueue_arguments: trial 0 runs the arguments' own values" in logs.text
    # Continuing the study does not queue the values again.
    trainer.args.n_trials = 3
    trainer.hyperparameter_search()
    assert [t.user_attrs.get("enqueued") for t in trainer.study.trials] == ["arguments", None, None]


def test_enqueue_arguments_samples_a_value_outside_the_space(out_dir):
    trainer = scripted_trainer(
        out_dir, [0.5], hp_space=LR_SPACE, learning_rate=0.5, enqueue_arguments=True, n_trials=1
    )
    with capture_logs("optuna_trainer") as logs:
        trainer.hyperparameter_search()
    (trial,) = trainer.study.trials
    assert 1e-4 <= trial.params["learning_rate"] <= 1e-2
    assert "learning_rate=0.5 (outside the space)" in logs.text


def test_without_enqueue_arguments_trial_0_is_sampled(out_dir):
    trainer = scripted_trainer(out_dir, [0.5], hp_space=LR_SPACE, learning_rate=2e-3, n_trials=1)
    trainer.hyperparameter_search()
    assert trainer.study.trials[0].params["learning_rate"] != 2e-3


@pytest.mark.parametrize("target", [None, 0.9])
def test_target_value_stops_the_search(out_dir, target):
    trainer = scripted_trainer(out_dir, [0.3, 0.95, 0.4, 0.5, 0.6], hp_space=LR_SPACE, n_trials=5, target_value=target)
    with capture_logs("optuna_trainer") as logs:
        trainer.hyperparameter_search()
    if target is None:
        assert len(trainer.study.trials) == 5
    else:
        assert len(trainer.study.trials) == 2
        assert "target_value=0.9 reached by trial 1 (value 0.95); no new trial starts" in logs.text


def test_target_value_when_minimizing(out_dir):
    trainer = scripted_trainer(
        out_dir, [0.5, 0.2, 0.1], hp_space=LR_SPACE, n_trials=3, direction="minimize", target_value=0.25
    )
    trainer.hyperparameter_search()
    assert len(trainer.study.trials) == 2


@pytest.mark.parametrize("patience", [None, 2])
def test_trials_without_improvement_stops_the_search(out_dir, patience):
    values = [0.8, 0.5, 0.6, 0.9, 0.95, 0.97]
    trainer = scripted_trainer(out_dir, values, hp_space=LR_SPACE, n_trials=6, trials_without_improvement=patience)
    trainer.hyperparameter_search()
    # 0.8 sets the best; 0.5 and 0.6 do not beat it: two in a row, the search stops before 0.9.
    assert len(trainer.study.trials) == (6 if patience is None else 3)


def test_stop_rules_hold_for_a_continued_study(out_dir):
    storage = f"sqlite:///{out_dir}/study.db"
    trainer = scripted_trainer(out_dir, [0.95] * 4, hp_space=LR_SPACE, n_trials=1, storage=storage)
    trainer.hyperparameter_search()
    trainer = scripted_trainer(out_dir, [0.95] * 4, hp_space=LR_SPACE, n_trials=4, storage=storage, target_value=0.9)
    trainer.hyperparameter_search()
    study = optuna.load_study(study_name=trainer.study.study_name, storage=storage)
    assert len(study.trials) == 1  # the target was reached by the earlier run: no new trial


def test_stop_rules_need_one_objective(out_dir):
    trainer = scripted_trainer(out_dir, [0.5], hp_space=LR_SPACE, target_value=0.9)
    with pytest.raises(ValueError, match=r"target_value: compares one objective's values"):
        trainer.hyperparameter_search(
            direction=["maximize", "minimize"], compute_objective=lambda m: (m["eval_accuracy"], m["eval_loss"])
        )
