"""Disk stays bounded during a search: checkpoints of the best trial and the running one only, whatever n_trials."""

from __future__ import annotations

import glob
import os

import optuna
import pytest
from transformers import TrainerCallback

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from tests.support import base_args, compute_metrics, make_dataset, tiny_model

SAVE_TOTAL_LIMIT = 2


def checkpoint_dirs(output_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(output_dir, "*", "checkpoint-*")))


class CountAtSave(TrainerCallback):
    """The most checkpoint folders seen under the search's output_dir right after any save."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = output_dir
        self.most = 0

    def on_save(self, args, state, control, **kwargs):
        self.most = max(self.most, len(checkpoint_dirs(self.output_dir)))


@pytest.mark.slow
def test_ten_trials_leave_only_the_best_trials_checkpoints(tmp_path) -> None:
    out = str(tmp_path / "out")
    at_save = CountAtSave(out)
    after_trial: list[int] = []
    args = OptunaTrainingArguments(
        **base_args(
            out,
            n_trials=10,
            max_steps=6,
            save_strategy="steps",
            save_steps=2,
            save_total_limit=SAVE_TOTAL_LIMIT,
            hp_space={"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}},
            sampler={"name": "random", "seed": 0},
            pruner={"name": "median", "n_startup_trials": 3},
        )
    )
    trainer = OptunaTrainer(
        model_init=tiny_model,
        args=args,
        train_dataset=make_dataset(64),
        eval_dataset=make_dataset(32, seed=1),
        compute_metrics=compute_metrics,
        callbacks=[at_save],
    )
    best = trainer.hyperparameter_search(
        callbacks=[lambda study, trial: after_trial.append(len(checkpoint_dirs(out)))]
    )

    study = trainer.study
    assert len(study.trials) == 10
    # Each save wrote a checkpoint (3 per full trial), yet the folders never pile up across trials.
    assert at_save.most <= 2 * SAVE_TOTAL_LIMIT  # the best trial's and the running one's
    assert all(n <= SAVE_TOTAL_LIMIT for n in after_trial), after_trial  # between trials: the best trial's only
    left = checkpoint_dirs(out)
    best_dir = study.trials[int(best.run_id)].user_attrs["run_dir"]
    assert 1 <= len(left) <= SAVE_TOTAL_LIMIT
    assert {os.path.dirname(p) for p in left} == {os.path.normpath(best_dir)}
    assert os.path.isdir(os.path.join(out, "best_model"))
    assert at_save.most > SAVE_TOTAL_LIMIT  # the running trial saved while the best one's were kept
    assert max(after_trial) == SAVE_TOTAL_LIMIT  # save_total_limit rotated the best trial's own checkpoints
    states = {t.state for t in study.trials}
    assert optuna.trial.TrialState.COMPLETE in states
