"""StepPercentilePruner: the trials that reached the same step, pruned ones included, decide."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from optuna_trainer import OptunaTrainingArguments
from optuna_trainer.space.pruners import build_pruner, describe_pruner
from optuna_trainer.space.step_percentile import StepPercentilePruner


def study_with(direction: str, *curves: tuple[TrialState, dict[int, float]]) -> optuna.Study:
    study = optuna.create_study(direction=direction)
    for state, values in curves:
        value = list(values.values())[-1] if state == TrialState.COMPLETE else None
        study.add_trial(create_trial(state=state, value=value, intermediate_values=values))
    return study


def decide(study: optuna.Study, pruner: StepPercentilePruner, values: dict[int, float]) -> bool:
    trial = study.ask()
    for step, value in values.items():
        trial.report(value, step)
    frozen = study.get_trials(deepcopy=False)[-1]
    return pruner.prune(study, frozen)


def test_pruned_trials_count_and_pruning_starts_with_the_second_trial():
    pruner = StepPercentilePruner(percentile=35.0, n_min_trials=2)
    # Two PRUNED trials reached step 128: Optuna's percentile pruner would wait for completed ones.
    study = study_with("maximize", (TrialState.PRUNED, {128: 0.60}), (TrialState.PRUNED, {128: 0.70}))
    assert math.isclose(np.percentile([0.60, 0.70], 35.0), 0.635)  # the cut: numpy's linear interpolation
    assert decide(study, pruner, {128: 0.63}) is True
    assert decide(study, pruner, {128: 0.64}) is False
    # Optuna's own percentile pruner, even with no start-up trials, sees no completed trial and keeps it.
    assert decide(study, optuna.pruners.PercentilePruner(35.0, n_startup_trials=0), {128: 0.63}) is False


def test_fewer_than_n_min_trials_at_the_step_never_prunes():
    pruner = StepPercentilePruner(percentile=35.0, n_min_trials=2)
    study = study_with("maximize", (TrialState.COMPLETE, {128: 0.9, 256: 0.9}), (TrialState.PRUNED, {128: 0.8}))
    # Step 256: one other trial reported it (the pruned one stopped at 128), so no decision there yet.
    assert decide(study, pruner, {128: 0.85, 256: 0.1}) is False
    # Step 128: two did; the trial's best so far (not its last value) is compared.
    assert decide(study, pruner, {128: 0.5}) is True
    # A RUNNING or FAIL trial's values do not count.
    study.add_trial(create_trial(state=TrialState.FAIL, intermediate_values={256: 0.99}))
    assert decide(study, pruner, {128: 0.85, 256: 0.1}) is False


def test_minimizing_mirrors_the_percentile():
    pruner = StepPercentilePruner(percentile=35.0, n_min_trials=2)
    study = study_with("minimize", (TrialState.COMPLETE, {10: 1.0}), (TrialState.PRUNED, {10: 2.0}))
    assert decide(study, pruner, {10: 1.70}) is True  # above the 65th percentile, 1.65
    assert decide(study, pruner, {10: 1.60}) is False


def test_nan_values():
    pruner = StepPercentilePruner(n_min_trials=1)
    study = study_with("maximize", (TrialState.PRUNED, {10: float("nan")}), (TrialState.COMPLETE, {10: 0.5}))
    assert decide(study, pruner, {10: float("nan")}) is True  # nothing but NaN: pruned, as Optuna's pruners do
    # The other trial's NaN is no value to compare with: one value, 0.5, is the percentile.
    assert decide(study, pruner, {10: 0.49}) is True and decide(study, pruner, {10: 0.51}) is False


def test_built_by_name_from_the_arguments_and_described():
    args = OptunaTrainingArguments(output_dir="out", pruner={"name": "step_percentile", "percentile": 40.0})
    pruner = build_pruner(args.pruner)
    assert isinstance(pruner, StepPercentilePruner)
    assert describe_pruner(pruner, args.pruner) == "StepPercentilePruner(percentile=40.0, n_min_trials=2)"
    assert describe_pruner(build_pruner("step_percentile"), "step_percentile") == (
        "StepPercentilePruner(percentile=35.0, n_min_trials=2)"
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"percentile": 100.0}, "percentile must be above 0 and below 100, got 100.0"),
        ({"percentile": 0}, "percentile must be above 0 and below 100, got 0"),
        ({"n_min_trials": 0}, "n_min_trials must be at least 1, got 0"),
        ({"n_min_trials": 1.5}, "n_min_trials must be a whole number"),
        ({"n_startup_trials": 3}, "unknown argument(s) ['n_startup_trials']; StepPercentilePruner takes"),
    ],
)
def test_bad_settings_are_refused_before_training(spec, message):
    with pytest.raises(ValueError, match=rf"pruner 'step_percentile'.*{__import__('re').escape(message)}"):
        OptunaTrainingArguments(output_dir="out", pruner={"name": "step_percentile", **spec})
