"""OptunaTrainer end to end on a tiny BERT: drop-in use, pruning, isolation, model parameters, memory, files."""

from __future__ import annotations

import gc
import os
import weakref

import optuna
import pytest
import torch
from transformers import BertForSequenceClassification, TrainerCallback, TrainingArguments
from transformers.trainer_utils import BestRun

from optuna_trainer import NoCompletedTrialError, OptunaTrainer, OptunaTrainingArguments
from tests.support import base_args, compute_metrics, make_dataset, tiny_config, tiny_model

TRAIN = make_dataset(64, 0)
EVAL = make_dataset(32, 1)
LR_SPACE = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


def make_trainer(out_dir, model_init=tiny_model, model=None, callbacks=None, metrics=compute_metrics, **overrides):
    args = OptunaTrainingArguments(**base_args(out_dir, **overrides))
    return OptunaTrainer(
        model=model,
        model_init=None if model is not None else model_init,
        args=args,
        train_dataset=TRAIN,
        eval_dataset=EVAL,
        compute_metrics=metrics,
        callbacks=callbacks,
    )


class SeenArgs(TrainerCallback):
    """Records, per trial, the arguments and the model the trainer trained with."""

    def __init__(self):
        self.args = []
        self.models = []
        self.first_weights = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.args.append(args)
        self.models.append(weakref.ref(model))
        self.first_weights.append(model.bert.embeddings.word_embeddings.weight.detach().clone())


def test_seed_snippet_runs_unchanged(out_dir):
    # The practitioner's note, verbatim apart from the trainer class and a smaller budget of steps.
    trainer = make_trainer(out_dir, metric_for_best_model="accuracy", per_device_train_batch_size=64)

    def hyperparameter_space(trial):
        return {
            "learning_rate": trial.suggest_float("learning_rate", 5e-6, 5e-5, log=True),
            "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size", [64, 128, 256]),
            "weight_decay": trial.suggest_float("weight_decay", 0.005, 0.05),
        }

    best_trial = trainer.hyperparameter_search(
        direction="maximize",
        backend="optuna",
        n_trials=5,
        hp_space=hyperparameter_space,
        compute_objective=lambda metrics: (
            trainer.state.best_metric if trainer.state.best_metric is not None else metrics["eval_accuracy"]
        ),
    )
    assert isinstance(best_trial, BestRun)
    study = trainer.study
    assert isinstance(study, optuna.Study) and len(study.trials) == 5
    assert best_trial.run_id == str(study.best_trial.number) and best_trial.objective == study.best_value
    assert set(best_trial.hyperparameters) == {"learning_rate", "per_device_train_batch_size", "weight_decay"}
    assert all(5e-6 <= t.params["learning_rate"] <= 5e-5 for t in study.trials)


def test_declarative_search_from_arguments_alone(out_dir):
    seen = SeenArgs()
    trainer = make_trainer(
        out_dir,
        callbacks=[seen],
        hp_space={**LR_SPACE, "weight_decay": {"type": "float", "low": 0.0, "high": 0.1}},
        sampler={"name": "random", "seed": 0},
        pruner="none",
        n_trials=3,
    )
    best = trainer.hyperparameter_search()
    study = trainer.study
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    # each trial trained with its own values and wrote under output_dir/run-{number}
    for trial, args in zip(study.trials, seen.args, strict=True):
        assert args.learning_rate == trial.params["learning_rate"]
        assert args.weight_decay == trial.params["weight_decay"]
        assert args.output_dir == os.path.join(str(out_dir), f"run-{trial.number}")
    assert best.hyperparameters == study.best_params
    # after the search the trainer is back on the user's arguments
    assert trainer.args.learning_rate == 1e-3 and trainer.args.output_dir == str(out_dir)


def test_trial_value_is_best_evaluation_not_last(out_dir):
    accuracies = iter([0.5, 0.9, 0.6, 0.7] * 10)

    def scripted_metrics(pred):
        return {"accuracy": next(accuracies)}

    trainer = make_trainer(out_dir, metrics=scripted_metrics, hp_space=LR_SPACE, pruner="none", n_trials=1)
    best = trainer.hyperparameter_search()
    trial = trainer.study.trials[0]
    assert trial.intermediate_values == {16: 0.5, 32: 0.9, 48: 0.6, 64: 0.7}  # at samples seen: 8 per step
    assert trial.value == 0.9 and best.objective == 0.9  # transformers would report 0.7, the last


def test_pruner_that_must_prune_does(out_dir):
    trainer = make_trainer(
        out_dir,
        hp_space=LR_SPACE,
        pruner={"name": "threshold", "lower": 2.0},
        n_trials=3,
        max_steps=8,
    )
    with pytest.raises(NoCompletedTrialError, match=r"no completed trial: 3 pruned, 0 failed"):
        trainer.hyperparameter_search()
    for trial in trainer.study.trials:
        assert trial.state == optuna.trial.TrialState.PRUNED
        assert trial.user_attrs["steps"] == 2 < 8  # stopped at the first evaluation instead of running 8 steps
        assert trial.user_attrs["pruned_at_step"] == 2
        assert list(trial.intermediate_values) == [16]  # step 2 x batch 8


def test_median_pruner_prunes_bad_trials_among_good_ones(out_dir):
    # Trials 0-1 score 0.9 at every evaluation, later ones 0.1: the median pruner (2 startup trials, warm-up of
    # 24 samples = 3 steps of batch 8) must stop the later ones at their second evaluation (step 4, 32 samples).
    trainer = None

    def scripted(pred):
        good = trainer.args.output_dir.endswith(("run-0", "run-1"))
        return {"accuracy": 0.9 if good else 0.1}

    trainer = make_trainer(
        out_dir,
        metrics=scripted,
        hp_space=LR_SPACE,
        pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 24},
        max_steps=12,
    )
    trainer.hyperparameter_search(n_trials=4)
    trials = trainer.study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    assert [t.user_attrs["steps"] for t in trials] == [12, 12, 4, 4]
    assert trials[2].intermediate_values == {16: 0.1, 32: 0.1}


def test_none_never_prunes(out_dir):
    trainer = make_trainer(out_dir, hp_space=LR_SPACE, pruner="none", n_trials=4)
    trainer.hyperparameter_search()
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trainer.study.trials)
    assert all(len(t.intermediate_values) == 4 for t in trainer.study.trials)


@pytest.mark.slow
def test_same_sampler_seed_same_parameters(tmp_path):
    def run(path):
        trainer = make_trainer(
            path,
            hp_space=LR_SPACE,
            sampler={"name": "tpe", "seed": 7, "n_startup_trials": 2},
            pruner="none",
            n_trials=4,
            max_steps=2,
            eval_steps=2,
        )
        trainer.hyperparameter_search()
        return [t.params for t in trainer.study.trials]

    assert run(tmp_path / "a") == run(tmp_path / "b")


def test_model_hyperparameter_reaches_config(out_dir):
    dropouts = []

    class Dropouts(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            dropouts.append((model.config.hidden_dropout_prob, model.bert.embeddings.dropout.p))

    trainer = make_trainer(
        out_dir,
        callbacks=[Dropouts()],
        n_trials=3,
        pruner="none",
        hp_space={"model.hidden_dropout_prob": {"type": "float", "low": 0.2, "high": 0.4}, **LR_SPACE},
    )
    trainer.hyperparameter_search()
    # the built model (its dropout modules, not only the config attribute) carries each trial's value
    values = [t.params["model.hidden_dropout_prob"] for t in trainer.study.trials]
    assert all(0.2 <= v <= 0.4 for v in values)
    assert [d[0] for d in dropouts] == values and [d[1] for d in dropouts] == values
    # and the saved best model too
    saved = BertForSequenceClassification.from_pretrained(out_dir / "best_model")
    assert saved.config.hidden_dropout_prob == trainer.study.best_params["model.hidden_dropout_prob"]


def test_unknown_model_attribute_fails_before_training(out_dir):
    seen = SeenArgs()
    trainer = make_trainer(
        out_dir, callbacks=[seen], hp_space={"model.hidden_dropout": {"type": "float", "low": 0.0, "high": 0.3}}
    )
    with pytest.raises(
        ValueError, match=r"hp_space\['model.hidden_dropout'\]: BertConfig has no attribute 'hidden_dropout'"
    ):
        trainer.hyperparameter_search()
    assert seen.args == [] and trainer.study is None


def test_values_from_an_earlier_trial_do_not_leak(out_dir):
    seen = SeenArgs()

    def hp_space(trial):
        # only trial 0 sets weight_decay and warmup; trial 1 must see the user's values again
        return {"weight_decay": 0.3, "warmup_steps": 3} if trial.number == 0 else {"learning_rate": 5e-4}

    trainer = make_trainer(out_dir, callbacks=[seen], pruner="none")
    trainer.hyperparameter_search(hp_space=hp_space, n_trials=2, direction="maximize")
    assert (seen.args[0].weight_decay, seen.args[0].warmup_steps) == (0.3, 3)
    assert (seen.args[1].weight_decay, seen.args[1].warmup_steps) == (0.0, 0)
    assert seen.args[1].learning_rate == 5e-4 and seen.args[0].learning_rate == 1e-3


def test_seed_is_set_before_the_model_is_built(out_dir):
    seen = SeenArgs()
    # skip_duplicates off: trial 1 repeats trial 0's parameters and must train to show its initial weights.
    trainer = make_trainer(out_dir, callbacks=[seen], pruner="none", skip_duplicates=False)
    trainer.hyperparameter_search(
        hp_space=lambda t: {"seed": t.suggest_categorical("seed", [11]) if t.number < 2 else 12},
        n_trials=3,
        direction="maximize",
    )
    w0, w1, w2 = seen.first_weights
    assert torch.equal(w0, w1)  # same trial seed -> same initial weights
    assert not torch.equal(w0, w2)


def test_model_init_that_suggests_itself(out_dir):
    # transformers' own tests build the model inside model_init(trial) with trial.suggest_*
    def model_init(trial):
        layers = trial.suggest_int("num_hidden_layers", 1, 2) if trial is not None else 1
        return BertForSequenceClassification(tiny_config(num_hidden_layers=layers))

    trainer = make_trainer(out_dir, model_init=model_init, hp_space=LR_SPACE, pruner="none", n_trials=3)
    best = trainer.hyperparameter_search()
    assert all("num_hidden_layers" in t.params for t in trainer.study.trials)
    assert "num_hidden_layers" in best.hyperparameters and "learning_rate" in best.hyperparameters


def test_model_without_model_init_restores_initial_weights(out_dir):
    seen = SeenArgs()
    model = tiny_model()
    initial = model.bert.embeddings.word_embeddings.weight.detach().clone()
    trainer = make_trainer(out_dir, model=model, callbacks=[seen], hp_space=LR_SPACE, pruner="none", n_trials=3)
    trainer.hyperparameter_search()
    assert len(seen.first_weights) == 3
    for weights in seen.first_weights:
        assert torch.equal(weights, initial)  # every trial starts from the same weights
    assert trainer.model is model and torch.equal(model.bert.embeddings.word_embeddings.weight, initial)


def test_memory_released_after_each_trial(out_dir):
    seen = SeenArgs()
    trainer = make_trainer(
        out_dir,
        callbacks=[seen],
        hp_space=LR_SPACE,
        pruner={"name": "threshold", "lower": 0.99},
        n_trials=4,
    )
    try:
        trainer.hyperparameter_search()
    except NoCompletedTrialError:
        pass
    gc.collect()
    assert len(seen.models) == 4
    assert all(ref() is None for ref in seen.models)  # no trial's model (pruned or not) survives the trial
    assert trainer.optimizer is None and trainer.lr_scheduler is None


def test_best_model_saved_and_pruned_checkpoints_deleted(out_dir):
    trainer = make_trainer(
        out_dir,
        hp_space=LR_SPACE,
        save_strategy="steps",
        save_steps=2,
        n_trials=4,
        max_steps=8,
        pruner={"name": "median", "n_startup_trials": 1},
        sampler={"name": "random", "seed": 1},
    )
    best = trainer.hyperparameter_search()
    best_dir = out_dir / "best_model"
    model = BertForSequenceClassification.from_pretrained(best_dir)
    assert model.config.hidden_size == 16
    import json

    assert json.loads((best_dir / "trial.json").read_text())["number"] == int(best.run_id)
    for trial in trainer.study.trials:
        run_dir = out_dir / f"run-{trial.number}"
        checkpoints = [p for p in os.listdir(run_dir) if p.startswith("checkpoint-")] if run_dir.exists() else []
        if trial.number == int(best.run_id):
            assert checkpoints, "the best trial keeps its checkpoints"
        else:
            assert checkpoints == [], f"trial {trial.number} ({trial.state.name}) left {checkpoints}"


def test_save_best_model_off(out_dir):
    trainer = make_trainer(out_dir, hp_space=LR_SPACE, n_trials=1, save_best_model=False)
    trainer.hyperparameter_search()
    assert not (out_dir / "best_model").exists()


def test_no_evaluation_during_training_evaluates_once_at_the_end(out_dir):
    trainer = make_trainer(out_dir, hp_space=LR_SPACE, eval_strategy="no", n_trials=2)
    trainer.hyperparameter_search()
    for trial in trainer.study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.value is not None and trial.intermediate_values == {}


def test_multi_objective_returns_pareto_front_without_pruning(out_dir, caplog):
    trainer = make_trainer(out_dir, hp_space=LR_SPACE, n_trials=3, pruner={"name": "threshold", "lower": 2.0})
    import logging

    logging.getLogger("optuna_trainer").propagate = True
    try:
        with caplog.at_level(logging.INFO, logger="optuna_trainer"):
            runs = trainer.hyperparameter_search(
                direction=["minimize", "maximize"],
                compute_objective=lambda m: (m["eval_loss"], m["eval_accuracy"]),
            )
    finally:
        logging.getLogger("optuna_trainer").propagate = False
    assert "pruning is off" in caplog.text
    assert isinstance(runs, list) and runs and all(isinstance(r, BestRun) for r in runs)
    assert all(len(r.objective) == 2 for r in runs)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trainer.study.trials)
    assert {r.run_id for r in runs} == {str(t.number) for t in trainer.study.best_trials}


def test_transformers_keywords_are_accepted(out_dir):
    seen_numbers = []
    seen = SeenArgs()
    trainer = make_trainer(out_dir, hp_space=LR_SPACE, callbacks=[seen])
    trainer.hyperparameter_search(
        n_trials=2,
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=optuna.pruners.NopPruner(),
        storage="memory",
        study_name="kw",
        timeout=600,
        catch=(RuntimeError,),
        callbacks=[lambda study, trial: seen_numbers.append(trial.number)],
        gc_after_trial=True,
        hp_name=lambda trial: f"trial-{trial.number}",
    )
    assert trainer.study.study_name == "kw" and isinstance(trainer.study.sampler, optuna.samplers.RandomSampler)
    assert seen_numbers == [0, 1]
    assert [a.output_dir for a in seen.args] == [str(out_dir / "trial-0"), str(out_dir / "trial-1")]
    with pytest.raises(ValueError, match=r"backend: OptunaTrainer searches with optuna only"):
        trainer.hyperparameter_search(backend="ray")


def test_plain_training_arguments_and_train_unchanged(out_dir):
    args = TrainingArguments(**{k: v for k, v in base_args(out_dir).items() if k not in ("storage", "n_trials")})
    trainer = OptunaTrainer(
        model=tiny_model(), args=args, train_dataset=TRAIN, eval_dataset=EVAL, compute_metrics=compute_metrics
    )
    assert trainer.args is args  # the user's object, as in Trainer
    output = trainer.train()
    assert output.global_step == 8 and trainer.study is None
    # A search on the plain arguments runs on the search fields' defaults and gives the same object back.
    trainer.hyperparameter_search(hp_space=LR_SPACE, n_trials=2)
    assert trainer.args is args and len(trainer.study.trials) == 2
    assert trainer.study.pruner.__class__.__name__ == "StepPercentilePruner"


def test_failed_trial_is_recorded_and_catch_goes_on(out_dir):
    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if args.output_dir.endswith("run-1"):
                raise RuntimeError("boom in trial 1")

    trainer = make_trainer(out_dir, callbacks=[Boom()], hp_space=LR_SPACE, pruner="none", n_trials=3)
    trainer.hyperparameter_search(catch=(RuntimeError,))
    states = [t.state.name for t in trainer.study.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]  # n_trials counts finished trials
    assert trainer.study.trials[1].user_attrs["fail_reason"] == "RuntimeError: boom in trial 1"

    trainer = make_trainer(out_dir / "again", callbacks=[Boom()], hp_space=LR_SPACE, pruner="none", n_trials=3)
    with pytest.raises(RuntimeError, match="boom in trial 1"):
        trainer.hyperparameter_search()
    assert [t.state.name for t in trainer.study.trials] == ["COMPLETE", "FAIL"]
    assert trainer.args.output_dir == str(out_dir / "again")  # the trainer is restored even when a trial raises


def test_default_storage_is_sqlite_under_output_dir(out_dir):
    trainer = make_trainer(out_dir, hp_space=LR_SPACE, n_trials=2, storage=None)
    trainer.hyperparameter_search()
    assert (out_dir / "optuna_study.db").is_file()
    loaded = optuna.load_study(study_name="out", storage=f"sqlite:///{out_dir / 'optuna_study.db'}")
    assert len(loaded.trials) == 2


@pytest.mark.slow
def test_a_search_whose_every_trial_fails_ends(out_dir):
    class AlwaysBoom(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            raise RuntimeError("out of luck")

    trainer = make_trainer(out_dir, callbacks=[AlwaysBoom()], hp_space=LR_SPACE, pruner="none", n_trials=2)
    with pytest.raises(NoCompletedTrialError, match=r"0 pruned, 10 failed"):
        trainer.hyperparameter_search(catch=(RuntimeError,))
    # failed trials do not count towards n_trials, but a search that only fails stops after max(n_trials, 10) in a row
    assert [t.state.name for t in trainer.study.trials] == ["FAIL"] * 10
