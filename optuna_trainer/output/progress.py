"""One progress bar over the trials of a search: done/total, pruned and failed counts, and the best value so far.

The bar sits on line 0 and stays for the whole search. Each trial's own step bar (transformers' `ProgressCallback`)
is swapped for one that nests under it (line 1, removed when the trial ends), and log records of Optuna, transformers
and optuna_trainer are written above the bars through tqdm, so the lines never fight. Everything is quiet when
`disable_tqdm` is set, and on every process but the main one.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import ProgressCallback

from optuna_trainer.study.bookkeeping import FINISHED, count_finished
from optuna_trainer.training.callbacks import TrialStepsProgressCallback

_REDIRECTED_LOGGERS = ("optuna", "optuna_trainer", "transformers")


class TrialProgress:
    """An Optuna study callback that drives the trials bar; `close()` it when the search ends.

    Args:
        study: the study, possibly resumed (its finished trials count from the start).
        n_trials: the total number of trials the search aims for (finished ones included).
        trainer: the trainer whose step bar should nest under the trials bar (optional).
        disable: no bar at all (`disable_tqdm`, or not the main process).
    """

    def __init__(self, study: optuna.Study | None, n_trials: int, trainer: Any = None, disable: bool = False) -> None:
        self.disable = disable
        self.n_pruned = self.n_failed = 0
        self.best: float | None = None
        self._trainer = trainer
        self._swapped = False
        self._redirect: contextlib.AbstractContextManager | None = None
        self.bar = None
        if disable or study is None:  # no study: a follower process of a DDP group, which shows no bar
            return
        for trial in study.get_trials(deepcopy=False):
            self._tally(study, trial)
        done = count_finished(study)
        self.bar = tqdm(
            total=n_trials,
            initial=min(done, n_trials),
            desc="trials",
            unit="trial",
            position=0,
            leave=True,
            dynamic_ncols=True,
        )
        self._show()
        if trainer is not None and trainer.pop_callback(ProgressCallback) is not None:
            trainer.add_callback(TrialStepsProgressCallback)
            self._swapped = True
        self._redirect = logging_redirect_tqdm(loggers=[logging.getLogger(n) for n in _REDIRECTED_LOGGERS])
        self._redirect.__enter__()

    def _tally(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Update the pruned/failed counts and the best value with one finished trial."""
        if trial.state == TrialState.PRUNED:
            self.n_pruned += 1
        elif trial.state == TrialState.FAIL:
            self.n_failed += 1
        elif trial.state == TrialState.COMPLETE and len(study.directions) == 1 and trial.value is not None:
            better = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
            self.best = trial.value if self.best is None else better(self.best, trial.value)

    def _show(self) -> None:
        postfix: dict[str, Any] = {"pruned": self.n_pruned, "failed": self.n_failed}
        if self.best is not None:
            postfix["best"] = f"{self.best:.4g}"
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=True)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.bar is None:
            return
        self._tally(study, trial)
        self.bar.update(int(trial.state in FINISHED))
        self._show()

    def close(self) -> None:
        """Close the bar, stop redirecting the logs and give the trainer its own step bar back."""
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
        if self._swapped:
            self._trainer.pop_callback(TrialStepsProgressCallback)
            self._trainer.add_callback(ProgressCallback)
            self._swapped = False
        if self.bar is not None:
            self.bar.close()
            self.bar = None


__all__ = ["TrialProgress"]
