"""One trial of a search, with a visible life cycle: prepare, run, finish.

- prepare: suggest the trial's values, find its resume point (a trial re-queued after its worker died), build its
  arguments from the user's and point the trainer at them, give it its model factory and its callbacks;
- run: train, evaluate once if training never did, score (the best evaluation), offer the model as the new best;
- finish: record the trial's attributes, take the callbacks off, release its memory, delete checkpoints nobody
  needs.

Every field of `TrialRun` is per-trial state; what lasts over trials lives in `Search` (search/search.py).
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
from typing import TYPE_CHECKING, Any, cast

import optuna
import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, number_of_arguments

from optuna_trainer.arguments import output_dir_of, trial_arguments
from optuna_trainer.search.resume import ResumePoint, find_resume_point, logged_evaluations
from optuna_trainer.space.budget import align_evaluations, samples_per_step
from optuna_trainer.space.objective import Objective, ObjectiveValue, is_finite
from optuna_trainer.space.search_space import SearchSpace, check_key, check_model_keys, split_params
from optuna_trainer.training.adapters import split_peft
from optuna_trainer.training.best_weights import BEST_EVALUATION_DIR, BestWeightsCallback, shards_weights
from optuna_trainer.training.callbacks import NonFiniteLossCallback, OptunaPruningCallback
from optuna_trainer.training.faults import trial_failure
from optuna_trainer.training.memory import release_trial_memory
from optuna_trainer.training.models import apply_config_values

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from optuna_trainer.search.search import Search


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


def apply_arguments(trainer: Trainer, args: TrainingArguments) -> None:
    """Give the trainer a trial's arguments (or the user's back): through its `use_trial_arguments` when it has one
    (`OptunaSearchMixin`, which trainers with data prepared from their arguments extend), else `use_arguments`."""
    hook = getattr(trainer, "use_trial_arguments", None)
    if hook is not None:
        hook(args)
    else:
        use_arguments(trainer, args)


def use_arguments(trainer: Trainer, args: TrainingArguments) -> None:
    """Make `args` the trainer's arguments, rebuilding what depends on them.

    Batch size, accumulation steps and mixed precision may differ per trial, so the accelerator is rebuilt, as
    transformers' own `_hp_search_setup` does. `_train_batch_size` is a private attribute that `Trainer` reads for
    the train dataloader and that transformers' search refreshes the same way (supported range: pyproject.toml);
    tests/test_trainer.py::test_batch_size_is_searched fails if it stops being read.
    """
    previous = trainer.args
    trainer.args = args
    trainer.create_accelerator_and_postprocess()
    trainer._train_batch_size = args.train_batch_size
    follow_arguments(trainer, previous, args)


def changed_fields(before: TrainingArguments, after: TrainingArguments) -> set[str]:
    """The names of the dataclass fields whose values differ between two arguments objects."""
    changed = set()
    for field in dataclasses.fields(after):
        old, new = getattr(before, field.name, None), getattr(after, field.name, None)
        try:
            different = bool(old != new)
        except Exception:  # noqa: BLE001 - a value that cannot be compared (an array) counts as changed
            different = True
        if different:
            changed.add(field.name)
    return changed


def follow_arguments(trainer: Trainer, previous: TrainingArguments, args: TrainingArguments) -> None:
    """Where the trainer or its data collator keeps its own copy of an argument, under the argument's name, the copy
    follows the new value.

    Trainers copy arguments into attributes in `__init__` and read the copy afterwards: TRL's `DPOTrainer` reads
    `self.beta`, `self.label_smoothing`, ..., and the collator it builds keeps `max_length` and `truncation_mode`.
    A searched `beta` must change the loss, not only `trainer.args.beta`; so every changed field that is also an
    instance attribute of the same name holding the previous value (a copy, not something else of that name, such as
    `Trainer.deepspeed`, the engine) is set again.
    """
    changed = changed_fields(previous, args)
    for holder in (trainer, getattr(trainer, "data_collator", None)):
        if holder is None or not hasattr(holder, "__dict__"):
            continue
        for name in changed & set(vars(holder)):
            if _same(vars(holder)[name], getattr(previous, name)):
                setattr(holder, name, getattr(args, name))


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001 - values that cannot be compared are not copies of each other
        return False


class TrialRun:
    """One trial: `execute()` runs prepare -> run -> finish and returns the trial's value (or raises)."""

    def __init__(self, search: Search, trial: optuna.trial.BaseTrial) -> None:
        self.search = search
        self.trial = trial
        self.trainer = search.trainer
        self.settings = search.settings
        self.coordinator = search.coordinator
        self.started = time.monotonic()
        self.values: dict[str, Any] = {}
        self.run_dir = ""
        self.resume: ResumePoint | None = None
        self.objective: Objective = dataclasses.replace(search.settings.objective, history=[])
        self.pruning: OptunaPruningCallback | None = None
        self.guard: NonFiniteLossCallback | None = None
        self.best_weights: BestWeightsCallback | None = None
        self.finished = False
        self.requeued = False  # interrupted and queued again: its checkpoints are where the next run resumes

    def execute(self) -> Any:
        try:
            self.prepare()
            return self.run()
        except optuna.TrialPruned:
            if self.pruning is not None:
                self.trial.set_user_attr("pruned_at_step", self.pruning.pruned_at)
                self.trial.set_user_attr("stopped_reason", self.pruning.stopped_reason)
            raise
        except (Exception, KeyboardInterrupt) as err:
            if isinstance(err, KeyboardInterrupt):
                self.search.requeue(self.trial.number)  # Ctrl-C: the study keeps the trial's place for the next run
                self.requeued = True
            failure = trial_failure(self.trial, err, self.settings.continue_on_oom, catch=self.settings.catch)
            if failure is err:
                raise
            raise failure from None
        finally:
            self.finish()

    # ---- prepare ---------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        self.values = self.suggest()
        rest, adapter_values = split_peft(self.values)
        args_values, model_values = split_params(rest)
        run_name = (
            self.settings.hp_name(self.trial) if self.settings.hp_name is not None else f"run-{self.trial.number}"
        )
        self.run_dir = os.path.join(output_dir_of(self.search.base_args), run_name)
        # A trial re-queued after its worker died continues in the original's run directory, from its checkpoint.
        number = self.trial.number  # rank 0's number on every process (SyncTrial)
        self.resume = self.coordinator.share(
            find_resume_point(self.search.study, number)
            if self.coordinator.is_main and self.search.study is not None
            else None
        )
        if self.resume is not None and self.resume.checkpoint is not None and self.resume.run_dir is not None:
            self.run_dir = self.resume.run_dir
            self.trial.set_user_attr("resumed_from_checkpoint", self.resume.checkpoint)
        self.trial.set_user_attr("run_dir", self.run_dir)
        self.trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")

        trial_args = trial_arguments(self.search.base_args, args_values, output_dir=self.run_dir)
        # Evaluations at the same training samples in every trial, whatever its batch size (space/budget.py).
        note = align_evaluations(self.search.base_args, trial_args, self.settings.prune_budget)
        if note is not None:
            logger.warning(f"Trial {self.trial.number}: {note}")
        per_step = samples_per_step(trial_args)
        self.trial.set_user_attr("samples_per_step", per_step)
        self.trial.set_user_attr("budget_per_step", per_step if self.settings.prune_budget == "samples" else 1)
        apply_arguments(self.trainer, trial_args)
        assert self.search.model_source is not None  # set by Search._take_trainer
        source = (
            self.search.adapters.for_trial(adapter_values)
            if self.search.adapters is not None
            else self.search.model_source
        )
        # transformers types model_init as returning a PreTrainedModel; it accepts any nn.Module.
        self.trainer.model_init = cast(Any, TrialModelInit(source, model_values, after_build=self.name_run))

        signal = self.settings.prune_signal
        self.pruning = OptunaPruningCallback(
            self.trial,
            self.objective,
            prune=not self.objective.multi,
            decide=self.coordinator.decide,
            budget=self.settings.prune_budget,
            signal=dataclasses.replace(signal, history=[]) if signal is not None else None,
        )
        self.trainer.add_callback(self.pruning)
        if self.resume is not None and self.resume.checkpoint is not None and not self.objective.multi:
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
        if self.settings.save_best_model and not self.objective.multi:
            # best_model/ must hold the weights of the evaluation the trial's value comes from (training/best_weights.py);
            # added after the pruning callback, which records each evaluation's value first.
            on_disk = shards_weights(self.trainer)
            self.best_weights = BestWeightsCallback(
                self.objective,
                self.current_model,
                save_to=os.path.join(self.run_dir, BEST_EVALUATION_DIR) if on_disk else None,
                save=self.trainer.save_model if on_disk else None,
            )
            self.trainer.add_callback(self.best_weights)
        if self.search.trackers is not None and self.search.trackers.active:
            self.search.trackers.before_trial(self.trial.number)

    def name_run(self) -> None:
        """Name the run directory again once the model is built: a `model_init(trial)` that suggests values itself
        (transformers' own tests do) adds them to `trial.params` only then, and `hp_name` names runs by them, as in
        transformers, where the run directory is named at the first save, after `model_init`."""
        if self.settings.hp_name is None or (self.resume is not None and self.resume.checkpoint is not None):
            return
        run_dir = os.path.join(output_dir_of(self.search.base_args), self.settings.hp_name(self.trial))
        if run_dir != self.run_dir:
            self.run_dir = self.trainer.args.output_dir = run_dir
            self.trial.set_user_attr("run_dir", run_dir)

    def suggest(self) -> dict[str, Any]:
        values = self._values()
        # Under DDP (SyncTrial): one trial, one set of values on every process, or an error on every process.
        same_everywhere = getattr(self.trial, "same_everywhere", None)
        if same_everywhere is not None:
            same_everywhere(values)
        return values

    def _values(self) -> dict[str, Any]:
        space = self.settings.hp_space
        if isinstance(space, SearchSpace):
            return space.suggest(self.trial)
        values = space(self.trial)
        if not isinstance(values, dict):
            raise TypeError(f"hp_space: the callable must return a dict of name -> value, got {type(values).__name__}")
        for key, value in values.items():
            check_key(key, type(self.search.base_args), value=value)
        check_model_keys(values, self.search.model_config)
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
        self.trial.set_user_attr("steps", self.trainer.state.global_step)
        self.pruning.check_pruned()
        value = self.score()
        self.finished = True
        self.search.offer_best(self, value)
        return value

    def score(self) -> ObjectiveValue | None:
        """The trial's value: the best objective over its evaluations whose weights are kept (training/best_weights.py)."""
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

    # ---- finish ----------------------------------------------------------------------------------------------

    def finish(self) -> None:
        state = self.trainer.state
        self.trial.set_user_attr("seconds", round(time.monotonic() - self.started, 3))
        if state is not None and "steps" not in self.trial.user_attrs:
            self.trial.set_user_attr("steps", state.global_step)
        if state is not None and state.max_steps:
            self.trial.set_user_attr("max_steps", state.max_steps)  # planned steps: the report's steps saved
        per_step = self.trial.user_attrs.get("samples_per_step")
        if state is not None and per_step:
            # The training consumed and planned in samples: the report's "saved by pruning" (space/budget.py).
            self.trial.set_user_attr("samples", state.global_step * per_step)
            if state.max_steps:
                self.trial.set_user_attr("max_samples", state.max_steps * per_step)
        for callback in (self.pruning, self.guard, self.best_weights):
            if callback is not None:
                self.trainer.remove_callback(callback)
        if self.guard is not None:
            self.guard.close()
        if self.best_weights is not None:
            self.best_weights.release()
        if self.search.trackers is not None:
            self.search.trackers.after_trial()
        if self.search.adapters is not None:
            self.search.adapters.release()  # the adapter off the shared base, before its memory goes
        release_trial_memory(self.trainer)
        if self.settings.gc_after_trial:
            gc.collect()
        keep = self.requeued or (self.finished and self.search.best.run_dir == self.run_dir)
        if self.run_dir and not keep:
            delete_checkpoints(self.run_dir, self.trainer.args.should_save)


def delete_checkpoints(run_dir: str, should_save: bool) -> None:
    """Delete the `checkpoint-*` folders of a run directory (on the process that saves)."""
    if not should_save or not os.path.isdir(run_dir):
        return
    for name in os.listdir(run_dir):
        if name.startswith(PREFIX_CHECKPOINT_DIR):
            shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
