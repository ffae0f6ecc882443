"""The progress of a search as a person watching it wants it: bars where they can be redrawn, plain lines elsewhere.

On a terminal (stderr is a TTY) or in a notebook (`tqdm.auto` draws widgets there), two bars:

- one over the trials, on line 0 for the whole search: done/total (complete and pruned, what `n_trials` counts),
  pruned, failed, the best value so far;
- one over the current trial's steps, nested under it (line 1, removed when its trial ends): transformers'
  `ProgressCallback`, swapped for a subclass during the search. What transformers logs (loss, evaluation metrics),
  as often as the arguments' `logging_strategy`/`eval_strategy` say, is shown as that bar's postfix instead of a
  dict printed on a line of its own, and evaluations draw no bar of their own.

Log records of Optuna, transformers and optuna_trainer are written above the bars through tqdm.

In a file or a CI log (no terminal), or with bars turned off (`disable_tqdm`, `show_progress_bar=False`), nothing
is redrawn: the log gets one line when a trial starts (number, parameters, planned training) and one when it ends
(number, state, value, parameters, samples, steps, seconds, and the search so far), the warnings, and the
end-of-search table. Optuna's own INFO line per trial is held back then (the end line says more), and so are
transformers' step bar, its per-log dicts and its bars for writing weights. With `disable_tqdm`, transformers'
`PrinterCallback` still prints every log dict: that is what the argument asks for.

Only the main process shows anything.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import ProgressCallback, TrainerCallback
from transformers.utils import logging as hf_logging

from optuna_trainer.output.report import budget_unit
from optuna_trainer.study.attrs import read
from optuna_trainer.study.bookkeeping import FINISHED, count_finished
from optuna_trainer.training.callbacks import TrialStepsProgressCallback

logger = logging.getLogger(__name__)

_REDIRECTED_LOGGERS = ("optuna", "optuna_trainer", "transformers")
# What the steps bar leaves out of transformers' logs: rates and bookkeeping, not results.
_NOT_SHOWN = ("total_flos", "grad_norm", "learning_rate", "epoch")


def in_notebook() -> bool:
    """Whether `tqdm.auto` draws notebook widgets here (a Jupyter kernel with ipywidgets)."""
    try:
        from tqdm.notebook import tqdm as notebook_tqdm
    except ImportError:
        return False
    return issubclass(tqdm, notebook_tqdm)


def bars_wanted() -> bool:
    """Whether redrawn bars can be followed where the output goes: a terminal or a notebook, not a file or CI log."""
    stream = sys.stderr
    return in_notebook() or bool(getattr(stream, "isatty", None) and stream.isatty())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return str(value)


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()) or "no parameters"


class StepsBar(TrialStepsProgressCallback):
    """The current trial's step bar: transformers' logs as its postfix (not a dict per line), no evaluation bar."""

    def __init__(self) -> None:
        super().__init__()
        self.shown: dict[str, str] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.shown = {}
        super().on_train_begin(args, state, control, **kwargs)

    def on_prediction_step(
        self, args: Any, state: Any, control: Any, eval_dataloader: Any = None, **kwargs: Any
    ) -> None:
        return  # an evaluation's batches get no bar: one bar per trial, and the result shows on it

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        for key, value in logs.items():
            if key not in _NOT_SHOWN and not key.endswith(("_runtime", "_per_second")) and not isinstance(value, str):
                self.shown[key] = _fmt(value)
        self.training_bar.set_postfix(self.shown, refresh=True)


class TrialLines(TrainerCallback):
    """Where no bar is drawn: the line that says a trial starts, when its training begins (its values are drawn)."""

    def __init__(self, progress: TrialProgress) -> None:
        self.progress = progress

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.progress.trial_started(state)


class TrialProgress:
    """An Optuna study callback that drives the trials bar; `close()` it when the search ends.

    Args:
        study: the study, possibly resumed (its finished trials count from the start).
        n_trials: the total number of trials the search aims for (finished ones included).
        trainer: the trainer whose step bar should nest under the trials bar, or whose trial starts are logged.
        disable: no bar (`disable_tqdm`, `show_progress_bar=False`, or not the main process); the main process
            then logs the trial lines.
        bars: draw bars (True) or log lines (False); by default bars on a terminal or in a notebook only.
    """

    def __init__(
        self,
        study: optuna.Study | None,
        n_trials: int,
        trainer: Any = None,
        disable: bool = False,
        bars: bool | None = None,
    ) -> None:
        self.disable = disable
        self.n_trials = n_trials
        self.n_pruned = self.n_failed = self.done = 0
        self.best: float | None = None
        self.best_number: int | None = None
        self._trainer = trainer
        self._swapped: type[TrainerCallback] | None = None
        self._lines: TrialLines | None = None
        self._redirect: contextlib.AbstractContextManager | None = None
        self._optuna_verbosity: int | None = None  # given back at close
        self._hf_bars: bool | None = None  # whether transformers' own bars were on, given back at close
        self.bar = None
        # no study: a follower process of a DDP group, which shows nothing
        main = study is not None and (trainer is None or trainer.is_world_process_zero())
        self.bars = main and not disable and (bars_wanted() if bars is None else bars)
        # Lines where no bar is drawn, on the main process; disable_tqdm turns bars off, not the log.
        self.lines = main and not self.bars
        if study is None or not main:
            return
        for trial in study.get_trials(deepcopy=False):
            self._tally(study, trial)
        self.done = count_finished(study)
        # transformers' other bars (writing weights, ...) would be a third bar on a terminal and redrawn lines in a
        # file: off until the search ends.
        self._hf_bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        if self.lines:
            self._start_lines()
            return
        done = self.done
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
            trainer.add_callback(StepsBar)
            self._swapped = StepsBar
        self._redirect = logging_redirect_tqdm(loggers=[logging.getLogger(n) for n in _REDIRECTED_LOGGERS])
        self._redirect.__enter__()

    def _start_lines(self) -> None:
        """No bar: transformers' step bar off (it would be redrawn into the file), the trial lines on."""
        if self._trainer is not None:
            if self._trainer.pop_callback(ProgressCallback) is not None:
                self._swapped = ProgressCallback
            self._lines = TrialLines(self)
            self._trainer.add_callback(self._lines)
        # Optuna's "Trial N finished with value ..." says less than the end line; its warnings still come through.
        self._optuna_verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(max(self._optuna_verbosity, optuna.logging.WARNING))
        logger.info(
            f"Search of {self.n_trials} trials ({self.done} finished before): one line per trial start and end "
            "(no progress bars: the output is not a terminal)"
        )

    def trial_started(self, state: Any) -> None:
        """Log that the trainer's current trial starts: its number, values and planned training."""
        # transformers keeps the trial it trains in `Trainer._trial` (set by `_hp_search_setup` before
        # on_train_begin); `state.trial_params` holds its values too. The start-line test fails if either goes.
        trial = getattr(self._trainer, "_trial", None)
        number = getattr(trial, "number", None)
        params = dict(getattr(trial, "params", None) or state.trial_params or {})
        planned = f"{state.max_steps} steps"
        per_step = read(trial).get("samples_per_step") if isinstance(trial, optuna.trial.BaseTrial) else None
        if per_step:
            planned += f", {state.max_steps * per_step} samples"
        name = f"Trial {number}" if number is not None else f"Trial {state.trial_name}"
        logger.info(f"{name} started: {_params(params)} ({planned} planned)")

    def trial_ended(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Log one line for a finished trial: what it gave, what it cost, and where the search stands."""
        attrs = read(trial)
        state = trial.state.name
        if trial.state == TrialState.COMPLETE:
            outcome = f"value {_fmt(trial.values if len(trial.values or []) > 1 else trial.value)}"
        elif trial.state == TrialState.PRUNED:
            if attrs.get("pruned_at_step") is not None:
                state += f" at step {attrs['pruned_at_step']}"
            outcome = "no value reported"
            if trial.user_attrs.get("infeasible"):
                # Out of memory, recorded as pruned with a failed constraint (training/faults.py).
                outcome = f"infeasible ({trial.user_attrs['infeasible']}): {attrs.get('fail_reason', '')}".rstrip(": ")
            elif trial.intermediate_values:
                last = max(trial.intermediate_values)
                where = f"{last} samples" if budget_unit(study) == "samples" else f"step {last}"
                outcome = f"last value {_fmt(trial.intermediate_values[last])} (at {where})"
        else:
            outcome = str(attrs.get("fail_reason") or "failed")
        cost = []
        if attrs.get("samples") is not None:
            cost.append(f"{attrs['samples']} samples")
        if attrs.get("steps") is not None:
            cost.append(f"{attrs['steps']} step{'' if attrs['steps'] == 1 else 's'}")
        if attrs.get("seconds") is not None:
            cost.append(f"{float(attrs['seconds']):.1f} s")
        if attrs.get("duplicate_of") is not None:
            cost = [f"repeats trial {attrs['duplicate_of']}, not trained (skip_duplicates)"]
        best = "" if self.best is None else f", best {_fmt(self.best)} (trial {self.best_number})"
        logger.info(
            f"Trial {trial.number} {state}: {outcome} | {_params(trial.params)} | "
            f"{', '.join(cost) or 'no training'} | {self.done}/{self.n_trials} done, {self.n_pruned} pruned, "
            f"{self.n_failed} failed{best}"
        )

    def _tally(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Update the pruned/failed counts and the best value with one finished trial."""
        if trial.state == TrialState.PRUNED:
            self.n_pruned += 1
        elif trial.state == TrialState.FAIL:
            self.n_failed += 1
        elif trial.state == TrialState.COMPLETE and len(study.directions) == 1 and trial.value is not None:
            maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
            if self.best is None or (trial.value > self.best if maximize else trial.value < self.best):
                self.best, self.best_number = trial.value, trial.number

    def _show(self) -> None:
        postfix: dict[str, Any] = {"pruned": self.n_pruned, "failed": self.n_failed}
        if self.best is not None:
            postfix["best"] = f"{self.best:.4g}"
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=True)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.bar is None and not self.lines:
            return
        self._tally(study, trial)
        self.done += int(trial.state in FINISHED)
        if self.lines:
            self.trial_ended(study, trial)
            return
        assert self.bar is not None
        self.bar.update(int(trial.state in FINISHED))
        self._show()

    def close(self) -> None:
        """Close the bar, stop redirecting the logs and give the trainer its own step bar back."""
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
        if self._lines is not None:
            self._trainer.remove_callback(self._lines)
            self._lines = None
        if self._swapped is not None:
            if self._swapped is not ProgressCallback:
                self._trainer.pop_callback(self._swapped)
            self._trainer.add_callback(ProgressCallback)
            self._swapped = None
        if self._optuna_verbosity is not None:
            optuna.logging.set_verbosity(self._optuna_verbosity)
            self._optuna_verbosity = None
        if self._hf_bars:
            hf_logging.enable_progress_bar()
        self._hf_bars = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None


__all__ = ["StepsBar", "TrialLines", "TrialProgress", "bars_wanted", "in_notebook"]
