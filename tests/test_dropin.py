"""transformers' own call on OptunaTrainer: the user's arguments object, the objective's defaults, Optuna kwargs."""

from __future__ import annotations

import optuna
import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.utils.hp_naming import TrialShortNamer

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from tests.support import base_args, compute_metrics, tiny_config, tiny_model

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


class Events(TrainerCallback):
    """Every callback event of a run, in order, with the step it came at."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def __getattribute__(self, name: str):
        if name.startswith("on_"):
            return lambda args, state, control, **kw: self.events.append((name, state.global_step))
        return super().__getattribute__(name)


def _weights(model) -> list[list[float]]:
    return [p.detach().flatten().tolist() for p in model.parameters()]


def test_train_is_trainers_train(out_dir):
    """Same arguments, same seed: OptunaTrainer's train() makes the same events, losses and weights as Trainer's."""
    runs = []
    for cls in (Trainer, OptunaTrainer):
        events = Events()
        args = _plain(out_dir / cls.__name__, logging_steps=1)
        trainer = cls(
            model_init=tiny_model,
            args=args,
            train_dataset=TRAIN,
            eval_dataset=EVAL,
            compute_metrics=compute_metrics,
            callbacks=[events],
        )
        callbacks = sorted(type(c).__name__ for c in trainer.callback_handler.callbacks)
        trainer.train()
        losses = [(h["step"], h.get("loss"), h.get("eval_loss")) for h in trainer.state.log_history]
        runs.append((callbacks, events.events, losses, _weights(trainer.model)))
    assert runs[0][0] == runs[1][0]  # the same callbacks: the search adds none at construction
    assert runs[0][1] == runs[1][1] and len(runs[0][1]) > 20
    assert runs[0][2] == runs[1][2]
    assert runs[0][3] == runs[1][3]


def test_after_a_search_train_is_trainers_train(out_dir):
    """A search leaves the trainer as it found it: train() afterwards equals a fresh Trainer's train()."""
    trainer = OptunaTrainer(
        model_init=tiny_model,
        args=_plain(out_dir / "a"),
        train_dataset=TRAIN,
        eval_dataset=EVAL,
        compute_metrics=compute_metrics,
    )
    before = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    trainer.hyperparameter_search(hp_space=_hp, n_trials=2, direction="maximize", storage="memory")
    assert [type(c).__name__ for c in trainer.callback_handler.callbacks] == before
    trainer.args.output_dir = str(out_dir / "b")
    trainer.train()
    fresh = Trainer(
        model_init=tiny_model,
        args=_plain(out_dir / "b"),
        train_dataset=TRAIN,
        eval_dataset=EVAL,
        compute_metrics=compute_metrics,
    )
    fresh.train()
    assert _weights(trainer.model) == _weights(fresh.model)
    assert [h.get("eval_accuracy") for h in trainer.state.log_history] == [
        h.get("eval_accuracy") for h in fresh.state.log_history
    ]


class _ShortNamer(TrialShortNamer):
    DEFAULTS = {"a": 0, "b": 0}


def test_transformers_own_search_call_with_an_empty_space_and_a_suggesting_model_init(out_dir):
    """transformers' tests/trainer/test_trainer_hyperparameter.py searches with `hp_space` returning {} while
    `model_init(trial)` suggests the values itself, names runs with a `TrialShortNamer`, keeps
    load_best_model_at_end and asks for two objectives: the same call here finds those values and names."""

    def model_init(trial):
        hidden_dropout = trial.suggest_float("a", 0.0, 0.3) if trial is not None else 0.0
        layers_seed = trial.suggest_int("b", 0, 4) if trial is not None else 0
        torch.manual_seed(layers_seed)
        from transformers import BertForSequenceClassification

        return BertForSequenceClassification(tiny_config(hidden_dropout_prob=hidden_dropout))

    args = _plain(out_dir, load_best_model_at_end=True, save_strategy="steps", save_steps=2)
    trainer = OptunaTrainer(
        model_init=model_init, args=args, train_dataset=TRAIN, eval_dataset=EVAL, compute_metrics=compute_metrics
    )
    front = trainer.hyperparameter_search(
        direction=["minimize", "maximize"],
        hp_space=lambda trial: {},
        hp_name=lambda trial: _ShortNamer.shortname(trial.params),
        n_trials=3,
        compute_objective=lambda metrics: (metrics["eval_loss"], metrics["eval_accuracy"]),
        storage="memory",
    )
    trials = trainer.study.trials
    assert all(set(t.params) == {"a", "b"} for t in trials)
    assert isinstance(front, list) and front and all(set(run.hyperparameters) == {"a", "b"} for run in front)
    run_dirs = {t.user_attrs["run_dir"] for t in trials}
    assert run_dirs == {str(out_dir / _ShortNamer.shortname(t.params)) for t in trials}
