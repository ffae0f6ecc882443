"""The pruning callback on a plain `transformers.Trainer`: report -> should_prune -> stop, nothing saved after."""

from __future__ import annotations

import os

import optuna
import pytest
from transformers import Trainer, TrainerCallback, TrainingArguments

from optuna_trainer import OptunaPruningCallback
from tests.support import compute_metrics, make_dataset, tiny_model


class RecordEnd(TrainerCallback):
    def __init__(self):
        self.train_end_step = None

    def on_train_end(self, args, state, control, **kwargs):
        self.train_end_step = state.global_step


def plain_trainer(tmp_path, callbacks, **overrides):
    values = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        max_steps=12,
        per_device_train_batch_size=8,
        eval_strategy="steps",
        eval_steps=4,
        save_strategy="steps",
        save_steps=2,
        logging_steps=4,
    )
    values.update(overrides)
    return Trainer(
        model=tiny_model(),
        args=TrainingArguments(**values),
        train_dataset=make_dataset(64),
        eval_dataset=make_dataset(32, 1),
        compute_metrics=compute_metrics,
        callbacks=callbacks,
    )


def test_prunes_at_first_evaluation_and_saves_nothing_after(tmp_path):
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0)
    )  # accuracy < 2: always
    trial = study.ask()
    callback = OptunaPruningCallback(trial, "accuracy", direction="maximize")
    end = RecordEnd()
    trainer = plain_trainer(tmp_path, [callback, end])
    trainer.train()
    assert callback.pruned_at == 4
    assert end.train_end_step == 4  # stopped through the normal path: on_train_end ran, at the decision's step
    assert trainer.state.global_step == 4
    # checkpoint-2 and checkpoint-4 would both be due; the one at the decision's step is not written
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2"]
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {
        32: callback.objective.history[0][1]
    }  # 4 x 8
    with pytest.raises(optuna.TrialPruned, match=r"pruned at step 4 \(32 samples\)"):
        callback.check_pruned()


def test_nop_pruner_reports_every_evaluation_and_never_stops(tmp_path):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    callback = OptunaPruningCallback(trial, "eval_accuracy", direction="maximize")
    trainer = plain_trainer(tmp_path, [callback], save_strategy="no")
    trainer.train()
    assert callback.pruned_at is None and trainer.state.global_step == 12
    assert sorted(study.trials[0].intermediate_values) == [32, 64, 96]  # samples seen: steps 4, 8, 12 x 8
    callback.check_pruned()  # does not raise
