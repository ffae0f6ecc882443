"""skip_duplicates: a trial that repeats a finished trial's parameters takes its result and trains nothing."""

from __future__ import annotations

import os

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from optuna_trainer.arguments import SEARCH_FIELDS
from optuna_trainer.exceptions import NoCompletedTrialError
from optuna_trainer.search.duplicates import find_twin, training_digest
from tests.support import CountingModelInit, base_args, capture_logs, compute_metrics, make_dataset

TRAIN = make_dataset(32, 0)
EVAL = make_dataset(16, 1)
# Two configurations: six trials must repeat at least four times.
TWO = {"learning_rate": {"type": "categorical", "choices": [1e-3, 3e-3]}}


def search(out_dir, raises=None, **overrides):
    model_init = CountingModelInit()
    args = base_args(out_dir, hp_space=TWO, n_trials=6, sampler={"name": "random", "seed": 0}, pruner="none")
    trainer = OptunaTrainer(
        model_init=model_init,
        args=OptunaTrainingArguments(**{**args, **overrides}),
        train_dataset=TRAIN,
        eval_dataset=EVAL,
        compute_metrics=compute_metrics,
    )
    with capture_logs("optuna_trainer") as logs:
        if raises is None:
            trainer.hyperparameter_search()
        else:
            with pytest.raises(raises):
                trainer.hyperparameter_search()
    return trainer, model_init, logs


def firsts(trials):
    """The first trial of each set of parameters, by learning rate."""
    seen = {}
    for t in trials:
        seen.setdefault(t.params["learning_rate"], t)
    return seen


def test_a_repeat_takes_its_twins_result_and_trains_nothing(out_dir):
    trainer, model_init, logs = search(out_dir)
    trials = trainer.study.trials
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    twins = firsts(trials)
    assert len(twins) == 2  # both configurations drawn with this seed
    # One model built per configuration (+1: the trainer's own model_init before the search).
    assert model_init.built == len(twins) + 1
    repeats = [t for t in trials if t.number not in {w.number for w in twins.values()}]
    assert len(repeats) == 4
    for t in repeats:
        twin = twins[t.params["learning_rate"]]
        assert t.user_attrs["duplicate_of"] == twin.number
        assert t.value == twin.value
        assert t.intermediate_values == twin.intermediate_values and t.intermediate_values
        assert t.user_attrs["samples"] == 0 and t.user_attrs["steps"] == 0
        assert not os.path.exists(os.path.join(out_dir, f"run-{t.number}"))
        assert f"Trial {t.number}: the same parameters and training settings as trial {twin.number}" in logs.text
    for twin in twins.values():
        assert "duplicate_of" not in twin.user_attrs and twin.user_attrs["samples"] == 8 * 8
    assert "duplicates   a repeat of a finished trial's parameters takes its result" in logs.text


def test_without_skip_duplicates_every_trial_trains_and_repeats_measure_the_same(out_dir):
    """The premise: every trial starts from the same state with the same seed, so a repeat trained again measures
    exactly what its twin measured."""
    trainer, model_init, logs = search(out_dir, skip_duplicates=False)
    trials = trainer.study.trials
    assert model_init.built == 6 + 1
    assert not any("duplicate_of" in t.user_attrs for t in trials)
    twins = firsts(trials)
    for t in trials:
        twin = twins[t.params["learning_rate"]]
        assert t.value == twin.value and t.intermediate_values == twin.intermediate_values
    assert "every trial trains, repeats too (skip_duplicates=false)" in logs.text


def test_a_pruned_twin_is_repeated_pruned(out_dir):
    # Every evaluation is below the threshold: the first trial of each configuration is pruned at its first one.
    trainer, model_init, logs = search(
        out_dir, raises=NoCompletedTrialError, pruner={"name": "threshold", "lower": 2.0}, n_trials=4
    )
    trials = trainer.study.trials
    assert all(t.state == TrialState.PRUNED for t in trials)
    twins = firsts(trials)
    assert model_init.built == len(twins) + 1
    for t in trials:
        twin = twins[t.params["learning_rate"]]
        if t.number != twin.number:
            assert t.user_attrs["duplicate_of"] == twin.number
            assert t.intermediate_values == twin.intermediate_values
            assert t.user_attrs["pruned_at_step"] == twin.user_attrs["pruned_at_step"]
            assert t.user_attrs["stopped_reason"].startswith(f"as trial {twin.number}: pruned at step 2")
            assert f"Trial {t.number} PRUNED at step 2: last value" in logs.text
            assert f"repeats trial {twin.number}, not trained (skip_duplicates)" in logs.text


def test_a_rerun_with_other_training_settings_trains_again(out_dir):
    storage = f"sqlite:///{out_dir}/study.db"
    one = {"learning_rate": {"type": "categorical", "choices": [1e-3]}}
    trainer, model_init, _ = search(out_dir, hp_space=one, n_trials=2, storage=storage)
    assert [t.user_attrs.get("duplicate_of") for t in trainer.study.trials] == [None, 0]
    # The same study, longer training: the earlier result measured something else, so the first new trial trains.
    trainer, model_init, _ = search(out_dir, hp_space=one, n_trials=4, storage=storage, max_steps=10)
    trials = trainer.study.trials
    assert [t.user_attrs.get("duplicate_of") for t in trials] == [None, 0, None, 2]
    assert model_init.built == 1 + 1
    assert trials[2].user_attrs["samples"] == 10 * 8
    assert trials[2].user_attrs["training_digest"] != trials[0].user_attrs["training_digest"]


def test_sigterm_while_a_repeat_is_recorded_keeps_its_place_and_the_rerun_repeats_it(out_dir, monkeypatch):
    """A scheduler's SIGTERM halfway through recording a repeat (its twin's first evaluation copied, not the rest):
    the repeat is marked FAIL and queued again with its parameters, no finished trial changes, and the same command
    continues the study, the queued copy again repeating its twin untrained."""
    import signal

    from optuna_trainer.search import trial as trial_module

    storage = f"sqlite:///{out_dir}/study.db"
    original = trial_module.copy_evaluations

    def copy_then_sigterm(trial, twin):
        step, value = sorted(twin.intermediate_values.items())[0]
        trial.report(value, step)
        signal.raise_signal(signal.SIGTERM)  # handled as Ctrl-C: KeyboardInterrupt here
        original(trial, twin)

    monkeypatch.setattr(trial_module, "copy_evaluations", copy_then_sigterm)
    trainer, model_init, logs = search(out_dir, raises=KeyboardInterrupt, storage=storage)
    trials = trainer.study.trials
    *finished, interrupted, queued = trials
    assert [t.state for t in finished] == [TrialState.COMPLETE] * len(finished) and len(firsts(finished)) == len(
        finished
    )
    assert (
        interrupted.state == TrialState.FAIL and interrupted.user_attrs["fail_reason"] == "KeyboardInterrupt: SIGTERM"
    )
    assert len(interrupted.intermediate_values) == 1  # cut off halfway: FAIL, so never anyone's twin
    assert queued.state == TrialState.WAITING and queued.params == interrupted.params
    assert queued.system_attrs["failed_trial"] == interrupted.number
    assert "SIGTERM: stopping as on Ctrl-C" in logs.text
    before = {t.number: (t.value, t.intermediate_values) for t in finished}

    monkeypatch.setattr(trial_module, "copy_evaluations", original)
    trainer, model_init, _ = search(out_dir, storage=storage)
    trials = trainer.study.trials
    assert {t.number: (t.value, t.intermediate_values) for t in trials[: len(finished)]} == before
    assert model_init.built == 1  # nothing trained again: every later trial repeats a finished one
    rerun = trials[queued.number]
    twin = trials[rerun.user_attrs["duplicate_of"]]
    assert rerun.state == TrialState.COMPLETE and rerun.params == interrupted.params
    assert (rerun.value, rerun.intermediate_values) == (twin.value, twin.intermediate_values)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 6


def _finished(state, digest="d", lr=1e-3, **attrs):
    return create_trial(
        state=state,
        value=0.5 if state == TrialState.COMPLETE else None,
        params={"learning_rate": lr},
        distributions={"learning_rate": CategoricalDistribution([1e-3, 3e-3])},
        user_attrs={"training_digest": digest, **attrs},
    )


@pytest.mark.parametrize(
    ("earlier", "is_twin"),
    [
        (_finished(TrialState.COMPLETE), True),
        (_finished(TrialState.PRUNED), True),
        (_finished(TrialState.FAIL), False),  # a failure may be transient: train again
        (_finished(TrialState.PRUNED, infeasible="out_of_memory"), False),  # may fit on another machine
        (_finished(TrialState.COMPLETE, digest="other"), False),  # other training settings
        (_finished(TrialState.COMPLETE, lr=3e-3), False),  # other parameters
        (_finished(TrialState.COMPLETE, digest=None), False),  # recorded before skip_duplicates existed
    ],
)
def test_which_finished_trial_is_a_twin(earlier, is_twin):
    study = optuna.create_study()
    study.add_trial(earlier)
    study.enqueue_trial({"learning_rate": 1e-3})
    trial = study.ask({"learning_rate": CategoricalDistribution([1e-3, 3e-3])})
    assert trial.params == {"learning_rate": 1e-3}
    found = find_twin(study, trial, "d")
    assert (found is not None) == is_twin
    if is_twin:
        assert found.number == 0


def test_the_training_digest_ignores_where_things_go_and_the_search_fields(tmp_path):
    a = OptunaTrainingArguments(**base_args(tmp_path / "a"))
    b = OptunaTrainingArguments(**base_args(tmp_path / "b", logging_steps=1, n_trials=9, pruner="none"))
    assert training_digest(a, SEARCH_FIELDS) == training_digest(b, SEARCH_FIELDS)
    for change in ({"max_steps": 9}, {"seed": 1}, {"weight_decay": 0.1}, {"per_device_train_batch_size": 4}):
        c = OptunaTrainingArguments(**base_args(tmp_path / "a", **change))
        assert training_digest(c, SEARCH_FIELDS) != training_digest(a, SEARCH_FIELDS), change


def test_a_callable_space_with_values_of_its_own_trains_every_trial(out_dir):
    """The study records only suggested values: a space that returns others (here derived from the trial number)
    cannot be told apart by its parameters, so every trial trains."""

    def hp_space(trial):
        return {
            "learning_rate": trial.suggest_categorical("learning_rate", [1e-3]),
            "weight_decay": 0.01 * trial.number,
        }

    trainer, model_init, _ = search(out_dir, hp_space=hp_space, n_trials=3)
    assert model_init.built == 3 + 1
    assert not any("duplicate_of" in t.user_attrs for t in trainer.study.trials)
