from __future__ import annotations

import math

import pytest

from optuna_trainer.space.objective import Objective, metric_key, normalize_direction, resolve_objective


def resolve(**kw):
    values = dict(
        compute_objective=None,
        objective_metric=None,
        metric_for_best_model=None,
        greater_is_better=None,
        direction=None,
    )
    values.update(kw)
    return resolve_objective(**values)


class TestResolve:
    def test_default_is_eval_accuracy_maximized(self):
        objective, source = resolve()
        assert objective.metric == "eval_accuracy" and objective.directions == ["maximize"]
        assert "default" in source

    def test_objective_metric_wins_over_metric_for_best_model(self):
        objective, _ = resolve(objective_metric="f1", metric_for_best_model="accuracy", greater_is_better=True)
        assert objective.metric == "eval_f1"

    def test_metric_for_best_model_and_greater_is_better(self):
        objective, _ = resolve(metric_for_best_model="loss", greater_is_better=False)
        assert objective.metric == "eval_loss" and objective.directions == ["minimize"]
        objective, _ = resolve(metric_for_best_model="wer", greater_is_better=False)
        assert objective.directions == ["minimize"]

    def test_loss_metrics_minimize(self):
        objective, _ = resolve(objective_metric="eval_loss")
        assert objective.directions == ["minimize"]

    def test_contradicting_direction_is_an_error(self):
        with pytest.raises(
            ValueError, match=r"direction: 'maximize' contradicts greater_is_better=False.*use direction='minimize'"
        ):
            resolve(metric_for_best_model="wer", greater_is_better=False, direction="maximize")
        with pytest.raises(ValueError, match=r"'eval_loss' is a loss"):
            resolve(objective_metric="loss", direction="maximize")

    def test_compute_objective_keeps_transformers_default(self):
        objective, source = resolve(compute_objective=lambda m: m["eval_loss"])
        assert objective.directions == ["minimize"] and "as in transformers" in source

    def test_several_directions_need_compute_objective(self):
        with pytest.raises(ValueError, match=r"several objectives need a compute_objective"):
            resolve(direction=["minimize", "maximize"])
        objective, _ = resolve(
            compute_objective=lambda m: (m["eval_loss"], m["eval_accuracy"]), direction=["minimize", "maximize"]
        )
        assert objective.multi and objective({"eval_loss": 0.5, "eval_accuracy": 0.9}) == (0.5, 0.9)


class TestObjective:
    def test_missing_metric_names_the_ones_that_exist(self):
        objective, _ = resolve()
        with pytest.raises(
            ValueError, match=r"'eval_accuracy' is not among the evaluation metrics \['eval_f1', 'eval_loss'\]"
        ):
            objective({"eval_loss": 0.3, "eval_f1": 0.8, "epoch": 1.0})

    def test_best_over_evaluations_not_last(self):
        objective = Objective(metric="eval_accuracy", compute_objective=None, directions=["maximize"])
        for step, value in [(2, 0.6), (4, 0.9), (6, 0.7)]:
            objective.record(step, value)
        assert objective.best() == 0.9
        objective = Objective(metric="eval_loss", compute_objective=None, directions=["minimize"])
        for step, value in [(2, 0.6), (4, 0.2), (6, math.nan)]:
            objective.record(step, value)
        assert objective.best() == 0.2

    def test_tuple_for_single_direction_is_an_error(self):
        objective, _ = resolve(compute_objective=lambda m: (1.0, 2.0), direction="maximize")
        with pytest.raises(ValueError, match=r"returned 2 values .* pass direction as a list"):
            objective({})


def test_normalize_direction():
    assert normalize_direction("MAXIMIZE") == "maximize"
    assert normalize_direction('["minimize", "maximize"]') == ["minimize", "maximize"]
    assert normalize_direction(["maximize"]) == "maximize"
    with pytest.raises(ValueError, match=r"direction: 'up' is not one of \['minimize', 'maximize'\]"):
        normalize_direction("up")
    assert metric_key("accuracy") == "eval_accuracy" and metric_key("eval_f1") == "eval_f1"


@pytest.mark.parametrize("returned", [None, "0.9", True], ids=["None", "str", "bool"])
def test_a_compute_objective_that_returns_no_number_fails_its_trial_with_the_reason(tmp_path, returned):
    from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
    from tests.support import base_args, compute_metrics, make_dataset, tiny_model

    trainer = OptunaTrainer(
        model_init=tiny_model,
        args=OptunaTrainingArguments(**base_args(tmp_path, n_trials=2, max_steps=2, eval_steps=2)),
        train_dataset=make_dataset(16),
        eval_dataset=make_dataset(8, seed=1),
        compute_metrics=compute_metrics,
    )
    with pytest.raises(TypeError, match=rf"compute_objective returned {returned!r} \({type(returned).__name__}\)"):
        trainer.hyperparameter_search(compute_objective=lambda metrics: returned, direction="maximize")
    (trial,) = trainer.study.trials
    assert trial.state.name == "FAIL" and "the objective must be a number" in trial.user_attrs["fail_reason"]
