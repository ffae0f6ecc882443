"""Faults inside a trial: out-of-memory, other exceptions, and a loss that turns NaN or infinite.

A search provokes failures on purpose (the batch sizes it tries run out of memory, a high learning rate makes the loss
diverge). Each of them must end one trial, with its reason kept on the trial, and never cost the study:

- out of memory: the trial is infeasible (user attributes ``fail_reason``, ``fault="out_of_memory"``,
  ``infeasible="out_of_memory"``), the frames that held its tensors are cleared so that its memory is released before
  the next trial, and the search goes on (``continue_on_oom=True``, the default; with False the error stops the search
  like any other). Infeasible is Optuna's constraint API: the trial ends PRUNED with the constraint
  ``out_of_memory = 1.0`` (``Trial.set_constraint``). PRUNED, not FAIL: TPE, GP and NSGA-II build their models from
  COMPLETE and PRUNED trials only, so a FAIL trial (constraint or not) teaches them nothing and TPE keeps proposing the
  batch sizes that ran out of memory; an infeasible PRUNED trial is ranked below every feasible one (TPE puts it in
  its "above" set), so later trials move away from its region (docs/benchmarks.md, figure 12). With
  ``oom_infeasible=False`` the trial is FAIL, as before.
- any other exception: the trial is FAIL with its ``fail_reason``, and the search stops unless the exception's class
  is listed in ``catch`` (Optuna's own rule).
- a NaN or infinite training loss (or gradient norm): the trial stops at that step and ends PRUNED, like a NaN
  objective (`NonFiniteLossCallback` in training/callbacks.py), so the sampler keeps the trial's earlier finite
  intermediate values, ranks it below every completed trial, and never receives NaN.
"""

from __future__ import annotations

import logging
import traceback

import optuna
import torch
from accelerate.utils.memory import should_reduce_batch_size

from optuna_trainer.exceptions import ArtifactUploadError, TrialOutOfMemoryError
from optuna_trainer.study import attrs

logger = logging.getLogger(__name__)

OOM_FAULT = "out_of_memory"
# The Optuna constraint (and the `infeasible` user attribute) of a trial that ran out of memory: > 0 is infeasible.
OOM_CONSTRAINT = "out_of_memory"
ERROR_FAULT = "error"
_REASON_CHARS = 2000


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


def catch_for(catch: tuple[type[Exception], ...], continue_on_oom: bool) -> tuple[type[Exception], ...]:
    """The exception classes `Study.optimize` catches: the user's `catch`, plus out-of-memory when it continues, plus
    a failed upload to the artifact store (the store may recover; the trial's checkpoint is what was lost)."""
    if continue_on_oom and TrialOutOfMemoryError not in catch:
        catch = (*catch, TrialOutOfMemoryError)
    return catch if ArtifactUploadError in catch else (*catch, ArtifactUploadError)


def record_infeasible(trial: optuna.trial.BaseTrial, reason: str = OOM_CONSTRAINT) -> None:
    """Mark `trial` infeasible through Optuna's constraint API (constraint `reason` = 1.0) and its user attribute.

    `Trial.set_constraint` (optuna >= 5) is what TPE, GP and NSGA-II read (`FrozenTrial.constraints`); on optuna 4,
    which has no such method, the samplers built by name read the user attribute instead (space/samplers.py
    `infeasible_constraints`).
    """
    attrs.write(trial, infeasible=reason)
    setter = getattr(trial, "set_constraint", None)
    if setter is None:
        return
    try:
        already = reason in trial.constraints  # a retried trial's; optuna warns when a constraint is set again
    except (AttributeError, NotImplementedError):  # DDP's SyncTrial forwards set_constraint only
        already = False
    if not already:
        setter(reason, 1.0)


def trial_failure(
    trial: optuna.trial.BaseTrial,
    err: BaseException,
    continue_on_oom: bool,
    catch: tuple[type[BaseException], ...] = (),
    oom_infeasible: bool = False,
) -> BaseException:
    """Record why `trial` failed and return the exception to raise out of the objective.

    When the search goes on past the failure (an out-of-memory error with ``continue_on_oom``, or an exception whose
    class is in ``catch``), the frames of its traceback are cleared: they hold the trial's activations, gradients and
    model, which would otherwise stay alive (and on the device) while the next trial builds its own, until Optuna
    drops the exception. Clearing keeps the traceback's files, lines and functions, so Optuna still logs where it
    failed. An out-of-memory error then becomes a `TrialOutOfMemoryError`, which the study catches (FAIL), or, with
    `oom_infeasible`, a `TrialPruned` on a trial marked infeasible (`record_infeasible`).
    """
    reason = f"{type(err).__name__}: {err}"[:_REASON_CHARS]
    oom = is_out_of_memory(err)
    attrs.write(trial, fail_reason=reason, fault=OOM_FAULT if oom else ERROR_FAULT)
    if not (oom and continue_on_oom):
        if isinstance(err, (*catch, ArtifactUploadError)) and err.__traceback__ is not None:
            traceback.clear_frames(err.__traceback__)  # caught: the search goes on with the next trial
        # Otherwise raised as it is: the search stops, with the full traceback (and its frames) to debug.
        return err
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(f"Trial {trial.number} ran out of memory:\n{''.join(traceback.format_exception(err))}")
    if err.__traceback__ is not None:
        traceback.clear_frames(err.__traceback__)
    err.__traceback__ = None
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if oom_infeasible:
        record_infeasible(trial, OOM_CONSTRAINT)
        logger.warning(
            f"Trial {trial.number} ran out of memory ({first_line[:300]}); it is recorded infeasible (PRUNED, "
            f"constraint {OOM_CONSTRAINT}=1, so the sampler avoids its region) and the search goes on "
            "(continue_on_oom=True, oom_infeasible=True)"
        )
        return optuna.TrialPruned(
            f"trial {trial.number} ran out of memory: {first_line[:500]}; recorded infeasible, the search goes on"
        )
    logger.warning(
        f"Trial {trial.number} ran out of memory ({first_line[:300]}); it is marked FAIL and the search goes on "
        "(continue_on_oom=True)"
    )
    return TrialOutOfMemoryError(
        f"trial {trial.number} ran out of memory: {first_line[:500]}; the search goes on. To stop getting such "
        "trials, lower the batch size range in hp_space or use gradient_accumulation_steps"
    )
