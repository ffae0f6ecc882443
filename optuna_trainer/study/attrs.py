"""The user attributes the search writes on trials and studies: one typed record that writers and readers share.

A trial's attributes are what the report, the trackers, a resumed trial and the launcher read back from the storage,
possibly written by another worker or another version: every key is named here once, with its type, and is written
with `write(trial, key=value)` (checked by mypy against `TrialAttrs`) and read with `read(frozen)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict, cast

if TYPE_CHECKING:
    import optuna
    from typing_extensions import Unpack


class TrialAttrs(TypedDict, total=False):
    """A trial's user attributes (`FrozenTrial.user_attrs`); every key optional: each is written when it is known.

    Keys:
        run_dir: the trial's run directory (checkpoints, logs); a resumed trial continues in its original's.
        worker: `host:pid` of the process that ran it (the launcher requeues the trials of a worker that died).
        resumed_from_checkpoint: the checkpoint a trial re-queued after its worker died continued from.
        samples_per_step: training samples per optimizer step (batch x accumulation x processes).
        budget_per_step: what one optimizer step adds to a reported step (samples_per_step, or 1 with
            prune_budget="steps"): how a resumed trial maps its original's reports onto checkpoints.
        steps / max_steps: optimizer steps run / planned.
        samples / max_samples: training samples seen / planned (the report's "saved by pruning").
        seconds: the trial's wall time.
        pruned_at_step: the reported step at which it was pruned.
        stopped_reason: why training stopped early (pruned, a non-finite loss).
        fail_reason: `ExceptionClass: message` of a failed trial.
        fault: "out_of_memory" or "error" for a failed trial.
        infeasible: why a trial is infeasible ("out_of_memory"): it ran out of memory and is recorded PRUNED with the
            Optuna constraint of that name set to 1.0 (training/faults.py), so constraint-aware samplers avoid it.
        enqueued: "arguments" for the trial of the arguments' own values (enqueue_arguments).
        training_digest: a hash of the training arguments the trial ran under (search/duplicates.py): a repeat of
            its parameters under the same digest takes its result.
        duplicate_of: the finished trial whose parameters and training settings this one repeats; it took that
            trial's evaluations, state and value without training (skip_duplicates).
        checkpoint_artifact: with `artifact_store`, the trial's newest checkpoint in the store (`artifact_id`, `step`,
            `sha256`, `bytes`; training/checkpoint_upload.py); None once the trial ended and it was removed. A retry
            copy inherits it and resumes from it on any machine.
    """

    run_dir: str
    worker: str
    resumed_from_checkpoint: str
    samples_per_step: int
    budget_per_step: int
    steps: int
    max_steps: int
    samples: int
    max_samples: int
    seconds: float
    pruned_at_step: int | None
    stopped_reason: str | None
    fail_reason: str
    fault: str
    infeasible: str
    enqueued: str
    training_digest: str
    duplicate_of: int
    checkpoint_artifact: dict[str, Any] | None


TRIAL_ATTRS: tuple[str, ...] = tuple(TrialAttrs.__annotations__)

# A study's user attributes (`Study.user_attrs`).
OBJECTIVE_ATTR = "optuna_trainer_objective"  # the objective's metric and direction (search/compatibility.py)
PRUNING_ATTR = "optuna_trainer_pruning"  # what is reported at which step (search/compatibility.py)
SETTINGS_ATTR = "optuna_trainer_settings"  # the resolved settings, described (output/report.py)
MLFLOW_PARENT_ATTR = "mlflow_parent_run_id"  # the study's one MLflow parent run (output/trackers.py)
ARTIFACT_STORE_ATTR = "optuna_trainer_artifact_store"  # the artifact_store the search used (study/artifacts.py)
# The study's best model in the artifact store: artifact_id, sha256, bytes, number, value (output/best_model.py).
BEST_MODEL_ARTIFACT_ATTR = "optuna_trainer_best_model_artifact"


def write(trial: optuna.trial.BaseTrial, **attrs: Unpack[TrialAttrs]) -> None:
    """Set the given attributes on `trial` (each key as `TrialAttrs` types it)."""
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def read(trial: optuna.trial.FrozenTrial | optuna.trial.BaseTrial) -> TrialAttrs:
    """The attributes of `TrialAttrs` that `trial` holds (others, written by the user, are left out)."""
    stored: dict[str, Any] = trial.user_attrs
    return cast(TrialAttrs, {key: stored[key] for key in TRIAL_ATTRS if key in stored})


__all__ = [
    "ARTIFACT_STORE_ATTR",
    "BEST_MODEL_ARTIFACT_ATTR",
    "MLFLOW_PARENT_ATTR",
    "OBJECTIVE_ATTR",
    "PRUNING_ATTR",
    "SETTINGS_ATTR",
    "TRIAL_ATTRS",
    "TrialAttrs",
    "read",
    "write",
]
