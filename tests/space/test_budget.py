"""Pruning at equal budget (prune_budget) and on a signal apart from the objective (prune_metric)."""

from __future__ import annotations

import json
import os

import optuna
import pytest

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from tests.support import base_args, capture_logs, make_dataset, tiny_model

TRAIN = make_dataset(64, 0)
EVAL = make_dataset(32, 1)
# One epoch of the 64 training samples: 8 steps at batch 8, 16 at batch 4; eval_steps=2 at the arguments' batch 8 is
# an evaluation every 16 samples.
EPOCH = dict(max_steps=-1, num_train_epochs=1, eval_steps=2, per_device_train_batch_size=8)


def make_trainer(out_dir, metrics, **overrides):
    trainer = OptunaTrainer(
        model_init=tiny_model,
        args=OptunaTrainingArguments(**base_args(out_dir, **{**EPOCH, **overrides})),
        train_dataset=TRAIN,
        eval_dataset=EVAL,
        compute_metrics=metrics,
    )
    return trainer


def samples_seen(trainer) -> int:
    args = trainer.args
    return trainer.state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps


def batch_space(first: int, rest: int):
    """Trial 0 trains at batch `first`, every later trial at batch `rest`."""

    def space(trial):
        # A value by trial number, not a suggestion: Optuna's categorical choices cannot change between trials.
        return {"per_device_train_batch_size": first if trial.number == 0 else rest}

    return space


def search_counting_samples(out_dir, key: str, choices: list[int], **kwargs) -> dict[int, optuna.trial.FrozenTrial]:
    """A 2-point grid over `key` whose accuracy is the share of the 64 training samples seen: each intermediate value
    says where its evaluation fell. The trials by their value of `key`."""
    trainer = None

    def metrics(pred):
        return {"accuracy": samples_seen(trainer) / 64}

    trainer = make_trainer(
        out_dir,
        metrics,
        hp_space={key: {"type": "categorical", "choices": choices}},
        sampler="grid",
        pruner="none",
        n_trials=2,
        **kwargs,
    )
    trainer.hyperparameter_search()
    assert trainer.args.eval_steps == 2  # the user's arguments are untouched
    return {t.params[key]: t for t in trainer.study.trials}


def test_evaluations_fall_at_equal_samples_whatever_the_batch(out_dir):
    trials = search_counting_samples(out_dir, "per_device_train_batch_size", [4, 8])
    for batch, steps in ((4, 16), (8, 8)):
        t = trials[batch]
        # Batch 4 evaluates every 4 steps (eval_steps=2 was given at batch 8): the same 16-sample points.
        assert t.intermediate_values == {16: 0.25, 32: 0.5, 48: 0.75, 64: 1.0}
        assert t.user_attrs["steps"] == steps and t.user_attrs["samples"] == 64
        assert t.user_attrs["samples_per_step"] == batch


def test_gradient_accumulation_counts_in_the_samples(out_dir):
    """Accumulation searched at batch 4: 2 accumulated batches are one step of 8 samples, evaluated every 8 samples
    like the arguments' own (batch 4, no accumulation, eval_steps=2)."""
    trials = search_counting_samples(out_dir, "gradient_accumulation_steps", [1, 2], per_device_train_batch_size=4)
    points = {8 * i: i / 8 for i in range(1, 9)}
    for accumulation, steps in ((1, 16), (2, 8)):
        t = trials[accumulation]
        assert t.user_attrs["samples_per_step"] == 4 * accumulation
        assert t.user_attrs["steps"] == steps and t.user_attrs["samples"] == 64
        assert t.intermediate_values == points


@pytest.mark.parametrize("budget", ["steps", "samples"])
def test_median_compares_a_small_batch_at_equal_samples(out_dir, budget):
    # Accuracy grows with the samples seen, the same for every batch size. At equal optimizer steps the batch-4 trial
    # has seen half the samples of the batch-8 one and looks worse: transformers' step keys prune it; samples do not.
    trainer = None

    def metrics(pred):
        return {"accuracy": samples_seen(trainer) / 64}

    trainer = make_trainer(
        out_dir,
        metrics,
        hp_space=batch_space(8, 4),
        pruner={"name": "median", "n_startup_trials": 1},
        prune_budget=budget,
        n_trials=2,
        search_report=True,
    )
    trainer.hyperparameter_search()
    small = trainer.study.trials[1]
    assert small.user_attrs["samples_per_step"] == 4
    summary = json.load(open(os.path.join(out_dir, "report", "summary.json"), encoding="utf-8"))
    if budget == "steps":
        assert small.state == optuna.trial.TrialState.PRUNED
        assert small.intermediate_values == {2: 8 / 64}  # step 2 of batch 4: 8 samples, against 16 of trial 0
        # The report counts what pruning saved in samples, and in steps beside them: 64 - 8 and 16 - 2.
        assert summary["samples_saved_by_pruning"] == 56 and summary["steps_saved_by_pruning"] == 14
    else:
        assert small.state == optuna.trial.TrialState.COMPLETE
        assert small.intermediate_values == trainer.study.trials[0].intermediate_values
        assert summary["samples_saved_by_pruning"] == 0 and summary["total_samples"] == 128


def test_printed_settings_say_what_a_pruning_step_is(out_dir):
    trainer = make_trainer(out_dir, lambda pred: {"accuracy": 0.5}, hp_space=batch_space(8, 8), n_trials=1)
    with capture_logs("optuna_trainer") as logs:
        trainer.hyperparameter_search()
    text = logs.text
    assert "prune_step   training samples seen: step x 8 (batch) x 1 (accumulation) x 1 (processes)" in text
    assert "prune_metric the objective" in text


def test_prune_metric_prunes_on_the_loss_while_accuracies_tie(out_dir):
    # Every trial sits on the same accuracy plateau; only the loss tells the dead trials from the live one.
    trainer = None

    def metrics(pred):
        live = trainer.args.output_dir.endswith("run-0")
        return {"accuracy": 0.5, "my_loss": 0.3 if live else 0.9}

    trainer = make_trainer(
        out_dir,
        metrics,
        hp_space=batch_space(8, 8),
        pruner={"name": "median", "n_startup_trials": 1},
        prune_metric="my_loss",
        n_trials=3,
    )
    trainer.hyperparameter_search()
    trials = trainer.study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "PRUNED"]
    assert trials[0].value == 0.5  # selected by the objective, accuracy
    assert trials[0].intermediate_values == {16: -0.3, 32: -0.3, 48: -0.3, 64: -0.3}  # negated: the study maximizes
    assert trials[1].intermediate_values == {16: -0.9}


def test_without_prune_metric_the_plateau_prunes_nothing(out_dir):
    trainer = None

    def metrics(pred):
        return {"accuracy": 0.5, "my_loss": 0.3 if trainer.args.output_dir.endswith("run-0") else 0.9}

    trainer = make_trainer(
        out_dir, metrics, hp_space=batch_space(8, 8), pruner={"name": "median", "n_startup_trials": 1}, n_trials=3
    )
    trainer.hyperparameter_search()
    assert [t.state.name for t in trainer.study.trials] == ["COMPLETE"] * 3


def test_a_missing_prune_metric_names_the_metrics_there_are(out_dir):
    trainer = make_trainer(
        out_dir, lambda pred: {"accuracy": 0.5}, hp_space=batch_space(8, 8), prune_metric="f1", n_trials=3
    )
    # Stopped at the first evaluation of the first trial: the error would repeat in every trial.
    with pytest.raises(
        ValueError, match=r"prune_metric: 'eval_f1' is not among the evaluation metrics \[.*eval_accuracy"
    ):
        trainer.hyperparameter_search()
    (trial,) = trainer.study.trials
    assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs["steps"] == 2


def test_rerun_with_another_budget_or_prune_metric_is_refused(out_dir):
    def metrics(pred):
        return {"accuracy": 0.5, "my_loss": 0.5}

    storage = f"sqlite:///{out_dir}/study.db"
    make_trainer(out_dir, metrics, hp_space=batch_space(8, 8), storage=storage, n_trials=1).hyperparameter_search()
    for change, message in (
        ({"prune_budget": "steps"}, r"prune_budget: .* reported its 1 trial\(s\)' evaluations at samples"),
        ({"prune_metric": "my_loss"}, r"prune_metric: .* reported 'eval_accuracy' to the pruner"),
    ):
        trainer = make_trainer(out_dir, metrics, hp_space=batch_space(8, 8), storage=storage, n_trials=2, **change)
        with pytest.raises(ValueError, match=message):
            trainer.hyperparameter_search()
        assert len(optuna.load_study(study_name=os.path.basename(out_dir), storage=storage).trials) == 1
