"""A rerun checks what it resumes: settings that cannot continue the stored study stop before any training, naming
what changed; safe changes go on with one log line."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import TrainerCallback

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from tests.support import base_args, capture_logs, compute_metrics, make_dataset, tiny_model

LR = {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}
WD = {"type": "categorical", "choices": [0.0, 0.01]}


class Steps(TrainerCallback):
    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def search(out_dir, **overrides: Any) -> tuple[OptunaTrainer, Steps]:
    values = base_args(out_dir, storage=None, n_trials=2, max_steps=2, eval_steps=2, search_report=False)
    values.update({"hp_space": {"learning_rate": LR, "weight_decay": WD}, "direction": "maximize"})
    values.update(overrides)
    steps = Steps()
    two = values.pop("compute_objective", None) == "two"  # several objectives: given in the call, as transformers does
    directions = values.pop("direction") if two else None
    trainer = OptunaTrainer(
        model_init=tiny_model,
        args=OptunaTrainingArguments(**values),
        train_dataset=make_dataset(32),
        eval_dataset=make_dataset(16, seed=1),
        compute_metrics=compute_metrics,
        callbacks=[steps],
    )
    if two:
        trainer.hyperparameter_search(
            direction=directions, compute_objective=lambda m: (m["eval_accuracy"], m["eval_loss"])
        )
    else:
        trainer.hyperparameter_search()
    return trainer, steps


@pytest.fixture
def stored(out_dir):
    trainer, steps = search(out_dir)
    assert [t.state.name for t in trainer.study.trials] == ["COMPLETE", "COMPLETE"] and steps.steps == 4
    return out_dir


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            {"direction": "minimize"},
            r"direction: study .* was created to maximize; these settings minimize\..*2 "
            r"finished trial.*direction='maximize'.*study_name",
        ),
        (
            {"direction": ["maximize", "minimize"], "compute_objective": "two"},
            r"direction: study .* has 1 objective\(s\) \['maximize'\]; these settings have 2",
        ),
        ({"objective_metric": "f1"}, r"objective_metric: .* by 'eval_accuracy'; these settings score by 'eval_f1'"),
        (
            {"hp_space": {"learning_rate": {"type": "categorical", "choices": [1e-3, 1e-2]}, "weight_decay": WD}},
            r"hp_space\['learning_rate'\]: the kind changed from float to categorical",
        ),
        (
            {"hp_space": {"learning_rate": {**LR, "log": False}, "weight_decay": WD}},
            r"hp_space\['learning_rate'\]: log changed from True to False \(the study's trials: float 0.0001..0.01 log; "
            r"now: float 0.0001..0.01\)",
        ),
        (
            {"hp_space": {"learning_rate": LR, "weight_decay": {"type": "categorical", "choices": [0.0, 0.1]}}},
            r"hp_space\['weight_decay'\]: the choices changed from \[0.0, 0.01\] to \[0.0, 0.1\]",
        ),
    ],
    ids=["direction", "objectives", "metric", "kind", "log", "choices"],
)
def test_a_change_that_cannot_continue_the_study_stops_before_training(stored, overrides, message):
    with pytest.raises(ValueError, match=message) as info:
        search(stored, n_trials=4, **overrides)
    assert "output_dir" in str(info.value)  # and says how to start a new study


def test_nothing_trains_and_the_study_is_untouched(stored):
    import optuna

    storage = f"sqlite:///{stored}/optuna_study.db"
    with pytest.raises(ValueError):
        search(stored, n_trials=4, direction="minimize")
    (summary,) = optuna.get_all_study_summaries(storage)
    assert summary.n_trials == 2 and summary.direction.name == "MAXIMIZE"


def test_safe_changes_go_on_with_a_log_line(stored):
    wider = {**LR, "low": 1e-5}
    with capture_logs() as logs:
        trainer, steps = search(
            stored,
            n_trials=4,
            hp_space={
                "learning_rate": wider,
                "weight_decay": WD,
                "warmup_steps": {"type": "int", "low": 0, "high": 2},
            },
        )
    assert len(trainer.study.trials) == 4 and steps.steps == 4  # two more trials ran
    assert "hp_space['learning_rate']: range changed from float 0.0001..0.01 log to float 1e-05..0.01 log" in logs.text
    assert "hp_space['warmup_steps']: a new key" in logs.text


def _learning_rates(trainer: OptunaTrainer) -> list[float]:
    return [t.params["learning_rate"] for t in trainer.study.trials]


@pytest.mark.slow
def test_a_resumed_seeded_search_continues_instead_of_repeating(tmp_path):
    def three_runs(out_dir) -> list[float]:
        sampler = {"name": "tpe", "seed": 0}  # the README's example
        for n_trials in (2, 4, 6):
            trainer, _ = search(out_dir, n_trials=n_trials, sampler=sampler, hp_space={"learning_rate": LR})
        return _learning_rates(trainer)

    first = three_runs(tmp_path / "a")
    assert len(first) == 6 and len(set(first)) == 6  # no run replays the values of the one before
    assert three_runs(tmp_path / "b") == first  # and the same commands still give the same values


def test_a_finished_grid_runs_nothing(out_dir):
    grid = {"learning_rate": {"type": "categorical", "choices": [1e-3, 1e-2]}}
    trainer, steps = search(out_dir, n_trials=5, sampler="grid", hp_space=grid)
    assert sorted(_learning_rates(trainer)) == [1e-3, 1e-2] and steps.steps == 4
    with capture_logs() as logs:
        again, steps = search(out_dir, n_trials=5, sampler="grid", hp_space=grid)
    assert len(again.study.trials) == 2 and steps.steps == 0
    assert "every point of its grid has run" in logs.text
