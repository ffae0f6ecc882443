"""One trial of a search, with a visible life cycle: prepare, run, close.

A `TrialRun` gets a frozen `TrialContext` (what every trial of the search reads) and returns a `TrialOutcome`
(value, state, run directory, the best evaluation's weights); it never reaches back into the search. The search
(search/search.py) applies what follows from the outcome: the best model, a requeue, the deletion of checkpoints.

- repeat (`skip_duplicates`): a trial whose values repeat a finished trial's takes that trial's result and ends
  without training (search/duplicates.py);
- prepare: find its resume point (a trial re-queued after its worker died), build its
  arguments from the user's and bind them to the trainer, give it its model factory and its callbacks;
- run: train, evaluate once if training never did, score (the best evaluation whose weights are kept);
- close: record the trial's attributes, take the callbacks off, release its memory.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, number_of_arguments

from optuna_trainer.arguments import SEARCH_FIELDS, output_dir_of, trial_arguments
from optuna_trainer.search.duplicates import find_twin, training_digest
from optuna_trainer.search.resume import ResumePoint, find_resume_point, logged_evaluations
from optuna_trainer.space.budget import align_evaluations, samples_per_step
from optuna_trainer.space.objective import Objective, ObjectiveValue, is_finite
from optuna_trainer.space.search_space import SearchSpace, check_key, check_model_keys, split_params
from optuna_trainer.study import attrs
from optuna_trainer.study.bookkeeping import copy_evaluations
from optuna_trainer.training.adapters import Adapters, split_peft
from optuna_trainer.training.best_weights import BEST_EVALUATION_DIR, BestWeightsCallback, shards_weights
from optuna_trainer.training.binding import apply_arguments
from optuna_trainer.training.callbacks import NonFiniteLossCallback, OptunaPruningCallback
from optuna_trainer.training.checkpoint_upload import CheckpointUploadCallback
from optuna_trainer.training.faults import trial_failure
from optuna_trainer.training.memory import release_trial_memory
from optuna_trainer.training.models import apply_config_values

if TYPE_CHECKING:
    from optuna_trainer.output.trackers import TrialTrackers
    from optuna_trainer.processes.coordinator import Coordinator
    from optuna_trainer.search.settings import SearchSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a search reads, fixed once the search has taken the trainer (search/search.py).

    Attributes:
        trainer: the trainer the trials train with (its arguments and model_init change per trial).
        settings: the search's resolved settings.
        coordinator: keeps the processes of the search in step.
        base_args: the user's arguments object; each trial's arguments are rebuilt from it.
        study: the study (None on the processes that follow the main one under DDP).
        model_source: where each trial's model comes from: the user's model_init, or a copy of the initial weights.
        model_config: the model's config before the search (checks `model.*` keys of a callable space).
        adapters: with `peft.*` keys, the shared base model that each trial wraps in a fresh adapter.
        trackers: per-trial MLflow / W&B runs (report_to), or None.
    """

    trainer: Trainer
    settings: SearchSettings
    coordinator: Coordinator
    base_args: TrainingArguments
    study: optuna.Study | None
    model_source: Callable[..., torch.nn.Module]
    model_config: Any = None
    adapters: Adapters | None = None
    trackers: TrialTrackers | None = None


@dataclass
class TrialOutcome:
    """How a trial ended, for the search to act on.

    Attributes:
        number: the trial's number (rank 0's on every process).
        state: COMPLETE, PRUNED or FAIL.
        run_dir: its run directory (its checkpoints).
        params: its values.
        value: its value when COMPLETE: the best evaluation whose weights `best_weights` holds.
        error: what the objective raises for a state other than COMPLETE (`TrialPruned`, the failure, or
            `KeyboardInterrupt`), already recorded on the trial.
        best_weights: where the best evaluation's weights are (in memory, or on disk under ZeRO-3/FSDP); None when
            no best model is kept.
        samples_per_step: training samples per optimizer step (the best model's record names its samples).
        uploads: with an artifact store, what holds the trial's checkpoint there (removed when the trial ends).
        duplicate_of: the number of the finished trial whose result this one repeats without training
            (search/duplicates.py), or None.
    """

    number: int
    state: TrialState
    run_dir: str
    params: dict[str, Any] = field(default_factory=dict)
    value: Any = None
    error: BaseException | None = None
    best_weights: BestWeightsCallback | None = None
    samples_per_step: int | None = None
    uploads: CheckpointUploadCallback | None = None
    duplicate_of: int | None = None

    @property
    def interrupted(self) -> bool:
        """Ctrl-C or SIGTERM: the study keeps the trial's place (queued again), and its checkpoints for the resume."""
        return isinstance(self.error, KeyboardInterrupt)

    def result(self) -> Any:
        """The objective's return: the value, or the error raised out of it."""
        if self.error is not None:
            raise self.error
        return self.value


class TrialModelInit:
    """The trial's `model_init`: the user's `model_init` (or a copy of the initial weights) with its `model.*` values.

    Set as `trainer.model_init` for the trial, so that `Trainer.train(trial=...)` builds the trial's model itself
    (through `call_model_init`, which trainers such as `SentenceTransformerTrainer` extend).
    """

    def __init__(
        self,
        source: Callable[..., torch.nn.Module],
        values: dict[str, Any],
        after_build: Callable[[], None] | None = None,
    ) -> None:
        self.source = source
        self.values = values
        self.takes_trial = _takes_argument(source)
        self.after_build = after_build

    def __call__(self, trial: Any = None) -> torch.nn.Module:
        model = self.source(trial) if self.takes_trial else self.source()
        model = apply_config_values(model, self.values)
        if self.after_build is not None:
            self.after_build()
        return model


def _takes_argument(func: Callable[..., Any]) -> bool:
    return number_of_arguments(func) >= 1


class TrialRun:
    """One trial: `execute()` prepares and runs it and returns its `TrialOutcome`; `close()` releases it."""

    def __init__(self, context: TrialContext, trial: optuna.trial.BaseTrial) -> None:
        self.context = context
        self.trial = trial
        self.trainer = context.trainer
        self.settings = context.settings
        self.coordinator = context.coordinator
        self.started = time.monotonic()
        self.values: dict[str, Any] = {}
        self.run_dir = ""
        self.resume: ResumePoint | None = None
        self.objective: Objective = dataclasses.replace(context.settings.objective.objective, history=[])
        self.pruning: OptunaPruningCallback | None = None
        self.guard: NonFiniteLossCallback | None = None
        self.best_weights: BestWeightsCallback | None = None
        self.uploads: CheckpointUploadCallback | None = None
        self.twin: FrozenTrial | None = None

    def execute(self) -> TrialOutcome:
        """Prepare and run the trial; an error is recorded on the trial and returned in the outcome, not raised."""
        try:
            twin = self.identify()
            if twin is not None:
                return self.repeat(twin)
            self.prepare()
            return self.outcome(TrialState.COMPLETE, value=self.run())
        except optuna.TrialPruned as pruned:
            if self.pruning is not None:
                attrs.write(
                    self.trial, pruned_at_step=self.pruning.pruned_at, stopped_reason=self.pruning.stopped_reason
                )
            return self.outcome(TrialState.PRUNED, error=pruned)
        except (Exception, KeyboardInterrupt) as err:
            return self.failed(err)

    def identify(self) -> FrozenTrial | None:
        """Suggest the trial's values and record what it trains (`training_digest`); returns the finished trial whose
        result it repeats (skip_duplicates), or None."""
        self.values = self.suggest()
        digest = training_digest(self.context.base_args, SEARCH_FIELDS)
        attrs.write(self.trial, training_digest=digest)
        # Only values that all come from the trial's suggestions identify what it trains: a callable space may
        # return values of its own (a constant, something derived), which the study does not record.
        if self.settings.control.skip_duplicates and self.values == self.trial.params:
            self.twin = self.coordinator.share(
                find_twin(self.context.study, self.trial, digest)
                if self.coordinator.is_main and self.context.study is not None
                else None
            )
        return self.twin

    def repeat_only(self) -> TrialOutcome | None:
        """The trial's outcome if it repeats a finished trial, else None, training nothing either way.

        For `isolate_trials`: the search's process, which holds the study, records a repeat itself and starts a
        trial's process only for a trial that trains (that process suggests the same values again: a trial's
        suggestions are recorded on it)."""
        try:
            twin = self.identify()
            outcome = None if twin is None else self.repeat(twin)
        except (Exception, KeyboardInterrupt) as err:
            outcome = self.failed(err)
        if outcome is not None:
            attrs.write(self.trial, seconds=round(time.monotonic() - self.started, 3))
        return outcome

    def repeat(self, twin: FrozenTrial) -> TrialOutcome:
        """End the trial with its twin's result, untrained: the twin's evaluations, state and value."""
        single = not self.settings.objective.multi
        if single:
            copy_evaluations(self.trial, twin)
        attrs.write(self.trial, duplicate_of=twin.number, steps=0, samples=0)
        logger.info(
            f"Trial {self.trial.number}: the same parameters and training settings as trial {twin.number} "
            f"({twin.state.name}); its result is repeated without training (skip_duplicates)"
        )
        if twin.state == TrialState.PRUNED:
            attrs.write(
                self.trial,
                pruned_at_step=twin.user_attrs.get("pruned_at_step"),
                stopped_reason=f"as trial {twin.number}: {twin.user_attrs.get('stopped_reason') or 'pruned'}",
            )
            error = optuna.TrialPruned(f"the same parameters as trial {twin.number}, which was pruned")
            return dataclasses.replace(self.outcome(TrialState.PRUNED, error=error), duplicate_of=twin.number)
        value = twin.value if single else list(twin.values)
        return dataclasses.replace(self.outcome(TrialState.COMPLETE, value=value), duplicate_of=twin.number)

    def failed(self, err: BaseException) -> TrialOutcome:
        """The outcome of a trial that raised `err` (in training, or while the search kept its model)."""
        control = self.settings.control
        failure = trial_failure(
            self.trial, err, control.continue_on_oom, catch=control.catch, oom_infeasible=control.oom_infeasible
        )
        if failure is not err:
            failure.__suppress_context__ = True  # raised in place of `err`, whose frames are cleared
        # Out of memory recorded infeasible ends PRUNED (training/faults.py: the state samplers learn from).
        infeasible = isinstance(failure, optuna.TrialPruned)
        return self.outcome(TrialState.PRUNED if infeasible else TrialState.FAIL, error=failure)

    def outcome(self, state: TrialState, value: Any = None, error: BaseException | None = None) -> TrialOutcome:
        return TrialOutcome(
            number=self.trial.number,
            state=state,
            run_dir=self.run_dir,
            params=dict(self.values),
            value=value,
            error=error,
            best_weights=self.best_weights,
            samples_per_step=attrs.read(self.trial).get("samples_per_step"),
            uploads=self.uploads,
        )

    # ---- prepare ---------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        rest, adapter_values = split_peft(self.values)
        args_values, model_values = split_params(rest)
        run_name = (
            self.settings.space.hp_name(self.trial)
            if self.settings.space.hp_name is not None
            else f"run-{self.trial.number}"
        )
        self.run_dir = os.path.join(output_dir_of(self.context.base_args), run_name)
        # A trial re-queued after its worker died continues in the original's run directory, from its checkpoint.
        number = self.trial.number  # rank 0's number on every process (SyncTrial)
        artifacts = self.settings.storage.artifacts
        self.resume = self.coordinator.share(
            find_resume_point(self.context.study, number, artifacts, local_run_dir=self.run_dir)
            if self.coordinator.is_main and self.context.study is not None
            else None
        )
        if self.resume is not None and self.resume.checkpoint is not None and self.resume.run_dir is not None:
            self.run_dir = self.resume.run_dir
            attrs.write(self.trial, resumed_from_checkpoint=self.resume.checkpoint)
        attrs.write(self.trial, run_dir=self.run_dir, worker=f"{socket.gethostname()}:{os.getpid()}")

        trial_args = trial_arguments(self.context.base_args, args_values, output_dir=self.run_dir)
        # Evaluations at the same training samples in every trial, whatever its batch size (space/budget.py).
        note = align_evaluations(self.context.base_args, trial_args, self.settings.pruning.budget)
        if note is not None:
            logger.warning(f"Trial {self.trial.number}: {note}")
        per_step = samples_per_step(trial_args)
        attrs.write(
            self.trial,
            samples_per_step=per_step,
            budget_per_step=per_step if self.settings.pruning.budget == "samples" else 1,
        )
        apply_arguments(self.trainer, trial_args)
        source = (
            self.context.adapters.for_trial(adapter_values)
            if self.context.adapters is not None
            else self.context.model_source
        )
        # transformers types model_init as returning a PreTrainedModel; it accepts any nn.Module.
        self.trainer.model_init = cast(Any, TrialModelInit(source, model_values, after_build=self.name_run))

        signal = self.settings.pruning.signal
        self.pruning = OptunaPruningCallback(
            self.trial,
            self.objective,
            prune=self.settings.pruning.enabled,
            decide=self.coordinator.decide,
            budget=self.settings.pruning.budget,
            signal=dataclasses.replace(signal, history=[]) if signal is not None else None,
        )
        self.trainer.add_callback(self.pruning)
        if self.resume is not None and self.resume.checkpoint is not None and self.settings.pruning.enabled:
            # The pruner's history as the original reported it; the objective's from the checkpoint's own log.
            for step, value in self.resume.history:
                self.trial.report(value, step)
            for step, metrics in logged_evaluations(self.resume.checkpoint):
                try:
                    self.objective.record(step, self.objective(metrics))
                except (ValueError, TypeError):
                    continue  # an evaluation without the objective's metric (another eval set)
        # A NaN/inf training loss ends the trial through the pruning callback's stop (recorded as pruned).
        self.guard = NonFiniteLossCallback(
            self.pruning.stop,
            self.current_model,
            decide=self.coordinator.decide,
            every_step=self.coordinator.world_size == 1,
        )
        self.trainer.add_callback(self.guard)
        if self.settings.control.save_best_model and not self.objective.multi:
            # best_model/ must hold the weights of the evaluation the trial's value comes from
            # (training/best_weights.py); added after the pruning callback, which records each evaluation's value
            # first.
            on_disk = shards_weights(self.trainer)
            self.best_weights = BestWeightsCallback(
                self.objective,
                self.current_model,
                save_to=os.path.join(self.run_dir, BEST_EVALUATION_DIR) if on_disk else None,
                save=self.trainer.save_model if on_disk else None,
            )
            self.trainer.add_callback(self.best_weights)
        if artifacts is not None:
            # Each checkpoint to the store as it is saved; a retry copy starts with the artifact it inherited.
            self.uploads = CheckpointUploadCallback(
                self.trial if self.coordinator.is_main else None,
                artifacts,
                current=attrs.read(self.trial).get("checkpoint_artifact") if self.coordinator.is_main else None,
                decide=self.coordinator.decide,
            )
            self.trainer.add_callback(self.uploads)
        if self.context.trackers is not None and self.context.trackers.active:
            self.context.trackers.before_trial(self.trial.number)

    def name_run(self) -> None:
        """Name the run directory again once the model is built: a `model_init(trial)` that suggests values itself
        (transformers' own tests do) adds them to `trial.params` only then, and `hp_name` names runs by them, as in
        transformers, where the run directory is named at the first save, after `model_init`."""
        if self.settings.space.hp_name is None or (self.resume is not None and self.resume.checkpoint is not None):
            return
        run_dir = os.path.join(output_dir_of(self.context.base_args), self.settings.space.hp_name(self.trial))
        if run_dir != self.run_dir:
            self.run_dir = self.trainer.args.output_dir = run_dir
            attrs.write(self.trial, run_dir=run_dir)

    def suggest(self) -> dict[str, Any]:
        values = self._values()
        # Under DDP (SyncTrial): one trial, one set of values on every process, or an error on every process.
        same_everywhere = getattr(self.trial, "same_everywhere", None)
        if same_everywhere is not None:
            same_everywhere(values)
        return values

    def _values(self) -> dict[str, Any]:
        space = self.settings.space.hp_space
        if isinstance(space, SearchSpace):
            return space.suggest(self.trial)
        values = space(self.trial)
        if not isinstance(values, dict):
            raise TypeError(f"hp_space: the callable must return a dict of name -> value, got {type(values).__name__}")
        for key, value in values.items():
            check_key(key, type(self.context.base_args), value=value)
        check_model_keys(values, self.context.model_config)
        return values

    def current_model(self) -> torch.nn.Module | None:
        """The model this trial trains (the non-finite loss guard hooks it when training begins)."""
        return self.trainer.model

    # ---- run -------------------------------------------------------------------------------------------------

    def run(self) -> Any:
        assert self.pruning is not None
        checkpoint = self.resume.checkpoint if self.resume is not None else None
        # transformers types `trial` as optuna.Trial; it only hands it to hp_name/model_init and its own search.
        self.trainer.train(resume_from_checkpoint=checkpoint, trial=cast(Any, self.trial))
        if not self.objective.history:
            # No evaluation during training: evaluate once at the end (nothing left to prune).
            self.pruning.prune = False
            self.trainer.evaluate()
        attrs.write(self.trial, steps=self.trainer.state.global_step)
        self.pruning.check_pruned()
        return self.score()

    def score(self) -> ObjectiveValue | None:
        """The trial's value: the best objective over its evaluations whose weights are kept
        (training/best_weights.py)."""
        assert self.pruning is not None
        metrics = self.pruning.last_metrics
        if self.objective.compute_objective is not None and metrics is not None:
            # A user objective may read trainer.state beyond the metrics: read it once more now that it is final.
            value = self.objective(metrics)
            if is_finite(value):
                self.objective.record(self.trainer.state.global_step, value)
        best = self.objective.best()
        held = self.best_weights.held if self.best_weights is not None else None
        if held is None or best == held.value:
            return best
        # A value no kept weights re-evaluate to is not handed back: the trial's value is what best_model/ holds.
        assert self.best_weights is not None
        unbacked = self.best_weights.best_unbacked()
        why = (
            f"its evaluation at step {unbacked[0]} ({unbacked[1]}) came before the checkpoint it resumed from, whose "
            "weights are all that is left of that run"
            if unbacked is not None
            else f"compute_objective gave {best} after training, which no evaluation's weights re-evaluate to (it "
            "reads trainer.state beyond the metrics)"
        )
        logger.warning(
            f"Trial {self.trial.number}: {why}; its value is {held.value}, the best evaluation whose weights are kept "
            f"(step {held.step})"
        )
        return held.value

    # ---- close ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Record the trial's final attributes, take its callbacks off the trainer and release its memory."""
        attrs.write(self.trial, seconds=round(time.monotonic() - self.started, 3))
        # A repeat never trained: the trainer's state is an earlier trial's.
        state = self.trainer.state if self.twin is None else None
        recorded = attrs.read(self.trial)
        if state is not None and "steps" not in recorded:
            attrs.write(self.trial, steps=state.global_step)
        if state is not None and state.max_steps:
            attrs.write(self.trial, max_steps=state.max_steps)  # planned steps: the report's steps saved
        per_step = recorded.get("samples_per_step")
        if state is not None and per_step:
            # The training consumed and planned in samples: the report's "saved by pruning" (space/budget.py).
            attrs.write(self.trial, samples=state.global_step * per_step)
            if state.max_steps:
                attrs.write(self.trial, max_samples=state.max_steps * per_step)
        for callback in (self.pruning, self.guard, self.best_weights, self.uploads):
            if callback is not None:
                self.trainer.remove_callback(callback)
        if self.guard is not None:
            self.guard.close()
        if self.best_weights is not None:
            self.best_weights.release()
        if self.context.trackers is not None:
            self.context.trackers.after_trial()
        if self.context.adapters is not None:
            self.context.adapters.release()  # the adapter off the shared base, before its memory goes
        release_trial_memory(self.trainer)
        if self.settings.control.gc_after_trial:
            gc.collect()


def delete_checkpoints(run_dir: str, should_save: bool) -> None:
    """Delete the `checkpoint-*` folders of a run directory (on the process that saves)."""
    if not should_save or not os.path.isdir(run_dir):
        return
    for name in os.listdir(run_dir):
        if name.startswith(PREFIX_CHECKPOINT_DIR):
            shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
