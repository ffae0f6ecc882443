"""Report every evaluation to the trial, ask the pruner, and stop training cleanly: a public `TrainerCallback`.

As in optuna-integration's pruning callbacks: report -> should_prune -> stop. Raising `TrialPruned` inside
`Trainer`'s loop would skip its own clean-up, so the callback only records the decision and asks the loop to stop
(`on_train_end` of every callback still runs); the caller then calls `check_pruned()` after `train()` returns.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optuna
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .objective import Objective, ObjectiveValue, resolve_objective

# Every decision is made once and then shared; in one process sharing is the identity. Under DDP the trainer passes
# a function that shares the main process's decision (a stop reason or None), or an error raised on any process, so
# that every rank stops at the same step (see distributed.py).
Decide = Callable[[Any], Any]


def _same(value: Any) -> Any:
    return value


class OptunaPruningCallback(TrainerCallback):
    """Reports the objective to an Optuna trial at every evaluation and stops pruned trials.

    Works with a plain `transformers.Trainer` too::

        callback = OptunaPruningCallback(trial, "eval_accuracy", direction="maximize")
        trainer = Trainer(..., callbacks=[callback])
        trainer.train()
        callback.check_pruned()  # raises optuna.TrialPruned if the pruner stopped the trial

    Args:
        trial: the trial to report to (None on processes that do not talk to the study).
        objective: an `Objective`, or the name of the metric to report.
        direction: the direction when `objective` is a name.
        prune: whether to ask the pruner at all (off for several objectives, which Optuna cannot prune).
        decide: shares a decision made on the main process with every process (identity in one process).
    """

    def __init__(
        self,
        trial: optuna.trial.BaseTrial | None,
        objective: Objective | str,
        direction: str | None = None,
        prune: bool = True,
        decide: Decide = _same,
    ) -> None:
        if isinstance(objective, str):
            objective, _ = resolve_objective(
                compute_objective=None,
                objective_metric=objective,
                metric_for_best_model=None,
                greater_is_better=None,
                direction=direction,
            )
        self.trial = trial
        self.objective = objective
        self.prune = prune and not objective.multi
        self.decide = decide
        self.pruned_at: int | None = None
        self.stopped_reason: str | None = None
        self.last_metrics: dict[str, float] | None = None

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if metrics is None or self.pruned_at is not None:
            return
        try:
            outcome: str | BaseException | None = self._judge(state, metrics)
        except Exception as err:  # noqa: BLE001 - shared like a decision, so that every process stops with it
            outcome = err
        # In one process this is the identity; under DDP every process gets the same outcome (the main process's
        # decision, or an error raised on any process) at the same step.
        outcome = self.decide(outcome)
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is not None:
            self._stop(state, control, outcome)

    def _judge(self, state: TrainerState, metrics: dict[str, float]) -> str | None:
        """Record the value and return why the trial stops here, or None to go on."""
        self.last_metrics = dict(metrics)
        value = self.objective(metrics)
        self.objective.record(state.global_step, value)
        if not _finite(value):
            # A NaN/inf objective would poison the sampler; the trial ends here and is recorded as pruned.
            return f"objective is {value} at step {state.global_step}"
        if self.trial is not None and self.prune:
            self.trial.report(value, state.global_step)
            if self.trial.should_prune():
                return f"pruned at step {state.global_step}"
        return None

    def _stop(self, state: TrainerState, control: TrainerControl, reason: str) -> None:
        self.pruned_at = state.global_step
        self.stopped_reason = reason
        control.should_training_stop = True
        # Nothing is saved after the decision: the trial's checkpoints are about to be discarded.
        control.should_save = False

    def _hold(self, control: TrainerControl) -> None:
        if self.pruned_at is not None:
            # The loop's end-of-epoch hooks may ask for another evaluation or save; a pruned trial does neither.
            control.should_save = False
            control.should_evaluate = False

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._hold(control)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._hold(control)

    @property
    def pruned(self) -> bool:
        return self.pruned_at is not None

    def check_pruned(self) -> None:
        """Raise `optuna.TrialPruned` if this trial was stopped; call it after `train()` returns."""
        if self.pruned_at is not None:
            raise optuna.TrialPruned(self.stopped_reason)

    def best(self) -> ObjectiveValue | None:
        """The best objective over this trial's evaluations."""
        return self.objective.best()


def _finite(value: ObjectiveValue) -> bool:
    if isinstance(value, tuple):
        return all(math.isfinite(v) for v in value)
    return math.isfinite(value)
