"""transformers' own call on OptunaTrainer: the user's arguments object, the objective's defaults, Optuna kwargs."""

from __future__ import annotations

import optuna
import pytest
from transformers import TrainingArguments

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from optuna_trainer.testing import base_args, compute_metrics, tiny_model

from .test_trainer import EVAL, LR_SPACE, TRAIN, SeenArgs


def _plain(out_dir, **overrides) -> TrainingArguments:
    values = {k: v for k, v in base_args(out_dir, **overrides).items() if k not in ("storage", "n_trials")}
    return TrainingArguments(**values)


def _hp(trial: optuna.Trial) -> dict:
    return {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)}


def test_change_to_args_before_the_search_is_honoured(out_dir):
    args = _plain(out_dir)
    seen = SeenArgs()
    trainer = OptunaTrainer(
        model_init=tiny_model,
        args=args,
        train_dataset=TRAIN,
        eval_dataset=EVAL,
        compute_metrics=compute_metrics,
        callbacks=[seen],
    )
    args.weight_decay = 0.05  # after the trainer was built, as tutorials do
    trainer.hyperparameter_search(hp_space=_hp, n_trials=2, direction="maximize", storage="memory")
    assert trainer.args is args and [a.weight_decay for a in seen.args] == [0.05, 0.05]
    assert args.learning_rate == 1e-3  # no trial's value leaked into the user's object


def test_without_compute_metrics_the_objective_is_eval_loss_minimized(out_dir):
    trainer = OptunaTrainer(model_init=tiny_model, args=_plain(out_dir), train_dataset=TRAIN, eval_dataset=EVAL)
    best = trainer.hyperparameter_search(hp_space=_hp, n_trials=2, storage="memory")
    assert trainer.study.direction == optuna.study.StudyDirection.MINIMIZE
    assert best.objective == pytest.approx(min(min(t.intermediate_values.values()) for t in trainer.study.trials))


def test_load_best_model_at_end_does_not_choose_the_objective(out_dir):
    # transformers sets metric_for_best_model="loss" itself here; the tutorial maximizes accuracy.
    args = _plain(out_dir, load_best_model_at_end=True, save_strategy="steps", save_steps=2)
    assert args.metric_for_best_model == "loss"
    trainer = OptunaTrainer(
        model_init=tiny_model, args=args, train_dataset=TRAIN, eval_dataset=EVAL, compute_metrics=compute_metrics
    )
    best = trainer.hyperparameter_search(
        hp_space=_hp, n_trials=2, direction="maximize", backend="optuna", storage="memory"
    )
    assert trainer.study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert 0.0 <= best.objective <= 1.0


def test_optuna_keyword_arguments_are_accepted_or_refused(out_dir):
    def trainer() -> OptunaTrainer:
        args = OptunaTrainingArguments(**base_args(out_dir, storage=None, n_trials=1))
        return OptunaTrainer(
            model_init=tiny_model, args=args, train_dataset=TRAIN, eval_dataset=EVAL, compute_metrics=compute_metrics
        )

    first = trainer()
    first.hyperparameter_search(
        hp_space=LR_SPACE, load_if_exists=True, show_progress_bar=False, directions=["maximize"], gc_after_trial=True
    )
    assert len(first.study.trials) == 1
    with pytest.raises(ValueError, match=r"load_if_exists=False: study .* already exists"):
        trainer().hyperparameter_search(hp_space=LR_SPACE, load_if_exists=False)
    with pytest.raises(TypeError, match=r"another transformers backend \(Ray Tune\)"):
        trainer().hyperparameter_search(hp_space=LR_SPACE, resources_per_trial={"cpu": 1})
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['shw_progress_bar'\]"):
        trainer().hyperparameter_search(hp_space=LR_SPACE, shw_progress_bar=False)
