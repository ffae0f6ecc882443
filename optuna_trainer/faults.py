"""Faults inside a trial: out-of-memory, other exceptions, and a loss that turns NaN or infinite.

A search provokes failures on purpose (the batch sizes it tries run out of memory, a high learning rate makes the loss
diverge). Each of them must end one trial, with its reason kept on the trial, and never cost the study:

- out of memory: the trial is FAIL (user attribute ``fail_reason``, ``fault="out_of_memory"``), the frames that held
  its tensors are cleared so that its memory is released before the next trial, and the search goes on
  (``continue_on_oom=True``, the default; with False the error stops the search like any other).
- any other exception: the trial is FAIL with its ``fail_reason``, and the search stops unless the exception's class
  is listed in ``catch`` (Optuna's own rule).
- a NaN or infinite training loss (or gradient norm): the trial stops at that step and ends PRUNED, like a NaN
  objective (see `pruning.py`), so the sampler keeps the trial's earlier finite intermediate values, ranks it below
  every completed trial, and never receives NaN.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Callable
from typing import Any

import optuna
import torch
from accelerate.utils.memory import should_reduce_batch_size
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)

OOM_FAULT = "out_of_memory"
ERROR_FAULT = "error"
_REASON_CHARS = 2000


class TrialOutOfMemoryError(RuntimeError):
    """One trial ran out of memory; with ``continue_on_oom`` the search catches it and goes on with the next trial."""


def is_out_of_memory(err: BaseException) -> bool:
    """Whether `err` says the device (or the host) ran out of memory.

    `torch.OutOfMemoryError` (CUDA, XPU), and any `RuntimeError` that accelerate's batch-size finder would answer by
    reducing the batch size (CUDA/HIP/XPU/MPS/CPU out of memory, cuDNN refusing a too-large batch), or whose message
    says "out of memory" in another wording.
    """
    if isinstance(err, torch.OutOfMemoryError):
        return True
    if not isinstance(err, RuntimeError):
        return False
    return should_reduce_batch_size(err) or "out of memory" in str(err).lower()


def catch_for(catch: tuple[type[BaseException], ...], continue_on_oom: bool) -> tuple[type[BaseException], ...]:
    """The exception classes `Study.optimize` catches: the user's `catch`, plus out-of-memory when it continues."""
    if continue_on_oom and TrialOutOfMemoryError not in catch:
        return (*catch, TrialOutOfMemoryError)
    return catch


def trial_failure(
    trial: optuna.trial.BaseTrial,
    err: BaseException,
    continue_on_oom: bool,
    catch: tuple[type[BaseException], ...] = (),
) -> BaseException:
    """Record why `trial` failed and return the exception to raise out of the objective.

    When the search goes on past the failure (an out-of-memory error with ``continue_on_oom``, or an exception whose
    class is in ``catch``), the frames of its traceback are cleared: they hold the trial's activations, gradients and
    model, which would otherwise stay alive (and on the device) while the next trial builds its own, until Optuna
    drops the exception. Clearing keeps the traceback's files, lines and functions, so Optuna still logs where it
    failed. An out-of-memory error then becomes a `TrialOutOfMemoryError`, which the study catches.
    """
    reason = f"{type(err).__name__}: {err}"[:_REASON_CHARS]
    oom = is_out_of_memory(err)
    trial.set_user_attr("fail_reason", reason)
    trial.set_user_attr("fault", OOM_FAULT if oom else ERROR_FAULT)
    if not (oom and continue_on_oom):
        if isinstance(err, catch) and err.__traceback__ is not None:
            traceback.clear_frames(err.__traceback__)  # caught: the search goes on with the next trial
        # Otherwise raised as it is: the search stops, with the full traceback (and its frames) to debug.
        return err
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(f"Trial {trial.number} ran out of memory:\n{''.join(traceback.format_exception(err))}")
    if err.__traceback__ is not None:
        traceback.clear_frames(err.__traceback__)
    err.__traceback__ = None
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    logger.warning(
        f"Trial {trial.number} ran out of memory ({first_line[:300]}); it is marked FAIL and the search goes on "
        "(continue_on_oom=True)"
    )
    return TrialOutOfMemoryError(
        f"trial {trial.number} ran out of memory: {first_line[:500]}; the search goes on. To stop getting such "
        "trials, lower the batch size range in hp_space or use gradient_accumulation_steps"
    )


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
        decide: shares an outcome (a reason, None, or an error) between processes; None in one process. Under
            DDP the decision is shared at logging steps only, so that training does
            not pay an exchange between processes at every step; a step's non-finite loss is kept until then.
    """

    def __init__(
        self,
        stop: Callable[[TrainerState, TrainerControl, str], None],
        model: Callable[[], torch.nn.Module | None],
        decide: Callable[[Any], Any] | None = None,
    ) -> None:
        self.stop = stop
        self.model = model
        self.decide = decide if decide is not None else (lambda outcome: outcome)
        self.every_step = decide is None
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
