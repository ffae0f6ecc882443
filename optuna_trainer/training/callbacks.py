"""The `TrainerCallback`s a trial runs with: report/prune, a non-finite loss guard, and the nested step bar.

As in optuna-integration's pruning callbacks: report -> should_prune -> stop. Raising `TrialPruned` inside
`Trainer`'s loop would skip its own clean-up, so `OptunaPruningCallback` only records the decision and asks the loop
to stop (`on_train_end` of every callback still runs); the caller then calls `check_pruned()` after `train()`
returns. `NonFiniteLossCallback` ends a diverged trial through the same `stop`. Every decision is made once and then
shared through `decide`: the identity in one process; under DDP the coordinator's exchange, so that every rank stops
at the same step (see processes/distributed.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import optuna
import torch
from tqdm.auto import tqdm
from transformers import ProgressCallback, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from optuna_trainer.space.budget import DEFAULT_BUDGET, budget_at, check_budget
from optuna_trainer.space.objective import Objective, ObjectiveValue, is_finite, resolve_objective

logger = logging.getLogger(__name__)

# Shares one decision (a stop reason, None, or an error) between the processes of a trial.
Decide = Callable[[Any], Any]


def same_decision(outcome: Any) -> Any:
    """The `Decide` of one process: the decision as it is."""
    return outcome


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
        budget: what the step of a reported value is: "samples" (training samples seen, so that trials with other
            batch sizes are compared at equal budget; see space/budget.py) or "steps" (the optimizer step, as
            transformers).
        signal: what is reported to the pruner, when not the objective itself (`prune_metric`): an `Objective` whose
            value is negated where its direction is not the study's, so that the pruner's comparisons hold.
    """

    def __init__(
        self,
        trial: optuna.trial.BaseTrial | None,
        objective: Objective | str,
        direction: str | None = None,
        prune: bool = True,
        decide: Decide = same_decision,
        budget: str = DEFAULT_BUDGET,
        signal: Objective | None = None,
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
        self.budget = check_budget(budget)
        self.signal = signal
        self.pruned_at: int | None = None
        self.pruned_at_budget: int | None = None
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
            outcome: str | BaseException | None = self._judge(args, state, metrics)
        except Exception as err:  # noqa: BLE001 - shared like a decision, so that every process stops with it
            outcome = err
        # In one process this is the identity; under DDP every process gets the same outcome (the main process's
        # decision, or an error raised on any process) at the same step.
        outcome = self.decide(outcome)
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is not None:
            self.stop(state, control, outcome)

    def _judge(self, args: TrainingArguments, state: TrainerState, metrics: dict[str, float]) -> str | None:
        """Record the value and return why the trial stops here, or None to go on."""
        self.last_metrics = dict(metrics)
        if self.objective.compute_objective is not None:
            with current_best_metric(args, state, metrics):
                value = self.objective(metrics)
        else:
            value = self.objective(metrics)
        self.objective.record(state.global_step, value)
        if not is_finite(value):
            # A NaN/inf objective would poison the sampler; the trial ends here and is recorded as pruned.
            return f"objective is {value} at step {state.global_step}"
        if self.trial is not None and self.prune:
            assert not isinstance(value, tuple)  # `prune` is off for several objectives
            reported = value if self.signal is None else self.signal_value(metrics)
            if not is_finite(reported):
                return f"prune_metric {self.signal.metric if self.signal else ''} is {reported} at step {state.global_step}"
            at = budget_at(args, state.global_step, self.budget)
            self.trial.report(reported, at)
            if self.trial.should_prune():
                self.pruned_at_budget = at
                unit = f" ({at} samples)" if self.budget == "samples" else ""
                return f"pruned at step {state.global_step}{unit}"
        return None

    def signal_value(self, metrics: dict[str, float]) -> float:
        """The pruning signal, oriented in the study's direction (a minimized loss is negated for a maximizing
        study)."""
        assert self.signal is not None
        value = self.signal(metrics)
        assert not isinstance(value, tuple)
        return value if self.signal.directions[0] == self.objective.directions[0] else -value

    def stop(self, state: TrainerState, control: TrainerControl, reason: str) -> None:
        """End the trial at this step (recorded as pruned by `check_pruned`), with `reason` kept on the trial."""
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

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._hold(control)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
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


@contextlib.contextmanager
def current_best_metric(args: TrainingArguments, state: TrainerState, metrics: dict[str, float]) -> Iterator[None]:
    """`state.best_metric` as it stands once this evaluation counts, for as long as a user objective reads it.

    `Trainer` updates `best_metric` only after the evaluation callbacks have run (`Trainer._determine_best_metric`,
    transformers 5.x): an objective that reads it (the seed note's `best_metric if not None else eval_accuracy`) would
    see the best of the evaluations before this one, and the trial would credit this evaluation's weights with another
    evaluation's value (training/best_weights.py keeps the weights of the evaluation whose value is best). The same
    rule as transformers' (`metric_for_best_model`, `greater_is_better`) is applied to a view that is undone
    afterwards, so that transformers' own update runs unchanged.
    """
    previous = state.best_metric
    name = args.metric_for_best_model
    value = metrics.get(name if name.startswith("eval_") else f"eval_{name}") if name else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if previous is None or (value > previous if args.greater_is_better else value < previous):
            state.best_metric = float(value)
    try:
        yield
    finally:
        state.best_metric = previous


class NonFiniteLossCallback(TrainerCallback):
    """Stops a trial whose training loss (or gradient norm) turns NaN or infinite, so it ends PRUNED with a reason.

    transformers' default ``logging_nan_inf_filter=True`` replaces a NaN step loss by the running average before it
    is logged, so ``logs["loss"]`` alone may never show the divergence while the weights already are NaN. The
    callback therefore checks every training step's loss where the model returns one (a forward hook on the trial's
    model: the flag stays on the device and is read once per optimizer step, as transformers' own filter does), and
    the logged ``loss`` and ``grad_norm`` (which the filter does not touch) for losses computed outside the model.

    Args:
        stop: called with ``(state, control, reason)`` to end the trial; the trainer passes its pruning callback's
            stop, so the trial is recorded like a pruned one (``pruned_at_step``, ``stopped_reason``).
        model: returns the model the trial trains (read at ``on_train_begin``).
        decide: shares an outcome (a reason, None, or an error) between processes (the identity in one process).
        every_step: share the decision at every optimizer step (one process, where sharing is free); under DDP it
            is shared at logging steps only, so that training does not pay an exchange between processes at every
            step, and a step's non-finite loss is kept until then.
    """

    def __init__(
        self,
        stop: Callable[[TrainerState, TrainerControl, str], None],
        model: Callable[[], torch.nn.Module | None],
        decide: Decide = same_decision,
        every_step: bool = True,
    ) -> None:
        self.stop = stop
        self.model = model
        self.decide = decide
        self.every_step = every_step
        self.stopped_reason: str | None = None
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._bad: torch.Tensor | None = None
        self._pending: str | None = None

    # ---- per-step loss, read from the model's output ---------------------------------------------------------

    def _forward_hook(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if not module.training or self.stopped_reason is not None:
            return
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if not isinstance(loss, torch.Tensor):
            return
        bad = ~torch.isfinite(loss.detach()).all()
        self._bad = bad if self._bad is None else self._bad | bad

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._remove_hook()
        model = self.model()
        if model is not None:
            self._handle = model.register_forward_hook(self._forward_hook)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._bad is not None and self._pending is None and bool(self._bad.item()):
            self._pending = f"training loss is not finite at step {state.global_step}"
        self._bad = None
        if self.every_step:
            self._share(state, control, self._pending)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        reason = self._pending
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if reason is None and isinstance(value, (int, float)) and not math.isfinite(value):
                reason = f"logged {key} is {value} at step {state.global_step}"
        self._share(state, control, reason)

    def _share(self, state: TrainerState, control: TrainerControl, reason: str | None) -> None:
        if self.stopped_reason is not None:
            return
        outcome = self.decide(reason)
        if isinstance(outcome, BaseException):
            raise outcome  # an error on another process: every process leaves the trial with it
        if outcome:
            self._end(state, control, str(outcome))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._remove_hook()

    def _end(self, state: TrainerState, control: TrainerControl, reason: str) -> None:
        self.stopped_reason = reason
        logger.warning(f"{reason}: the trial stops here and is recorded as pruned (a diverged trial has no value)")
        self.stop(state, control, reason)
        # The weights are NaN from here on: evaluating or saving them would only waste time and disk.
        control.should_evaluate = False
        control.should_save = False

    def _remove_hook(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def close(self) -> None:
        """Remove the hook (also when training raised before `on_train_end`)."""
        self._remove_hook()
        self._bad = None
        self._pending = None


class TrialStepsProgressCallback(ProgressCallback):
    """transformers' step bar for one trial, nested under the trials bar and removed when the trial ends."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.training_bar = tqdm(
                total=state.max_steps, desc="  steps", position=1, leave=False, dynamic_ncols=True
            )
        self.current_step = 0


__all__ = [
    "Decide",
    "NonFiniteLossCallback",
    "OptunaPruningCallback",
    "TrialStepsProgressCallback",
    "current_best_metric",
    "same_decision",
]
