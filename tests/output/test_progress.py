"""The trials progress bar: counts, best value, nesting of the per-trial bar, and quiet when disable_tqdm is set."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from transformers import ProgressCallback

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from optuna_trainer.output.progress import TrialProgress
from optuna_trainer.training.callbacks import TrialStepsProgressCallback
from tests.support import base_args, compute_metrics, make_dataset, tiny_model


def _finished(state: TrialState, value: float | None = None):
    return create_trial(state=state, value=value)


def test_counts_and_best(capsys):
    study = optuna.create_study(direction="maximize")
    study.add_trial(_finished(TrialState.COMPLETE, 0.7))  # resumed: counts from the start
    progress = TrialProgress(study, n_trials=5)
    assert progress.bar.n == 1 and progress.best == 0.7
    for state, value in [
        (TrialState.PRUNED, None),
        (TrialState.FAIL, None),
        (TrialState.COMPLETE, 0.9),
        (TrialState.COMPLETE, 0.8),
    ]:
        study.add_trial(_finished(state, value))
        progress(study, study.trials[-1])
    # done counts complete and pruned trials (what n_trials counts); failed trials are shown apart.
    assert progress.bar.n == 4 and progress.bar.total == 5
    assert (progress.n_pruned, progress.n_failed, progress.best) == (1, 1, 0.9)
    progress.close()
    err = capsys.readouterr().err
    assert "4/5" in err and "pruned=1" in err and "failed=1" in err and "best=0.9" in err


def test_minimize_keeps_the_lowest():
    study = optuna.create_study(direction="minimize")
    progress = TrialProgress(study, n_trials=3)
    for value in (0.5, 0.2, 0.4):
        study.add_trial(_finished(TrialState.COMPLETE, value))
        progress(study, study.trials[-1])
    assert progress.best == 0.2
    progress.close()


def test_disabled_is_silent(capsys):
    study = optuna.create_study()
    progress = TrialProgress(study, n_trials=3, disable=True)
    study.add_trial(_finished(TrialState.COMPLETE, 0.1))
    progress(study, study.trials[-1])
    progress.close()
    assert progress.bar is None and capsys.readouterr().err == ""


class PruneTrialOne(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return trial.number == 1


def _trainer(out_dir, **overrides) -> OptunaTrainer:
    args = OptunaTrainingArguments(
        **base_args(out_dir, pruner=PruneTrialOne(), search_report=False, save_best_model=False, **overrides)
    )
    return OptunaTrainer(
        model_init=tiny_model,
        args=args,
        train_dataset=make_dataset(32),
        eval_dataset=make_dataset(16, seed=1),
        compute_metrics=compute_metrics,
    )


def test_search_shows_the_trials_bar(out_dir, capsys):
    trainer = _trainer(out_dir, disable_tqdm=False)
    seen = []
    original = TrialStepsProgressCallback.on_train_begin

    def spy(self, args, state, control, **kwargs):
        original(self, args, state, control, **kwargs)
        seen.append((self.training_bar.pos, self.training_bar.leave))

    TrialStepsProgressCallback.on_train_begin = spy
    try:
        trainer.hyperparameter_search()
    finally:
        TrialStepsProgressCallback.on_train_begin = original
    err = capsys.readouterr().err
    assert "trials: 100%" in err and "3/3" in err and "pruned=1" in err
    # Each trial's step bar nests under the trials bar (line 1) and goes away with its trial.
    assert [abs(pos) for pos, _ in seen] == [1, 1, 1] and not any(leave for _, leave in seen)
    # After the search the trainer has transformers' own step bar back.
    kinds = [type(cb) for cb in trainer.callback_handler.callbacks]
    assert ProgressCallback in kinds and TrialStepsProgressCallback not in kinds


@pytest.mark.parametrize("disable_tqdm", [True])
def test_search_quiet_with_disable_tqdm(out_dir, capsys, disable_tqdm):
    _trainer(out_dir, disable_tqdm=disable_tqdm).hyperparameter_search()
    err = capsys.readouterr().err
    assert "trials:" not in err and "pruned=" not in err
