"""One hyperparameter search: settings -> study -> trials -> result.

`Search.prepare` resolves the settings from the trainer's arguments and the call, checks everything that can be
checked without training, and creates (or loads) the study (search/prepare.py); `Search.run` runs the study's missing
trials through the study loop (search/loop.py), one `TrialRun` each (search/trial.py), applies each trial's outcome
(the best model, a requeue, its checkpoints), then writes the report and returns transformers' `BestRun`. One process
and N processes run this same code: every point where they must agree goes through the coordinator
(processes/coordinator.py).
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import optuna
import torch
from optuna.trial import TrialState
from transformers import PreTrainedModel, Trainer, TrainingArguments
from transformers.trainer_utils import BestRun

from optuna_trainer.arguments import output_dir_of
from optuna_trainer.exceptions import NoCompletedTrialError
from optuna_trainer.output.best_model import (
    BEST_MODEL_DIR,
    best_model_lock,
    publish_best_model,
    recover,
    save_best_model,
    stored_record,
)
from optuna_trainer.output.progress import TrialProgress
from optuna_trainer.output.report import write_report
from optuna_trainer.output.trackers import TrialTrackers
from optuna_trainer.processes.coordinator import Coordinator, StopRequest
from optuna_trainer.processes.signals import interrupt_on_sigterm
from optuna_trainer.search.control import StopRules
from optuna_trainer.search.isolated import TrialProcessDied, make_recipe, run_isolated
from optuna_trainer.search.loop import run_trials
from optuna_trainer.search.prepare import settle
from optuna_trainer.search.settings import SearchSettings
from optuna_trainer.search.trial import TrialContext, TrialOutcome, TrialRun, delete_checkpoints
from optuna_trainer.study.attrs import read
from optuna_trainer.study.bookkeeping import best_value, count_finished, grid_exhausted, is_better, requeue
from optuna_trainer.study.claims import local_lock
from optuna_trainer.training.adapters import Adapters
from optuna_trainer.training.binding import apply_arguments
from optuna_trainer.training.faults import catch_for
from optuna_trainer.training.models import InitialModel

logger = logging.getLogger(__name__)


@dataclass
class BestSoFar:
    """The best value this process knows of, and the run directory whose checkpoints hold it."""

    value: Any = None
    run_dir: str | None = None


class Search:
    """One search over one trainer; see the module docstring.

    Attributes:
        trainer: the trainer whose `hyperparameter_search` started the search.
        settings: the resolved settings.
        study: the study (None on the processes that follow the main one under DDP).
        coordinator: keeps the processes of the search in step (the identity in one process).
        base_args: the user's arguments object; each trial's arguments are rebuilt from it.
        best: the best value and its run directory, the same on every process.
        context: what every trial reads (set while trials run).
    """

    def __init__(
        self, trainer: Trainer, settings: SearchSettings, study: optuna.Study | None, coordinator: Coordinator
    ) -> None:
        self.trainer = trainer
        self.settings = settings
        self.study = study
        self.coordinator = coordinator
        self.base_args: TrainingArguments = trainer.args
        self.best = BestSoFar()
        self.stop = StopRequest()
        self.stop_rules = StopRules(
            settings.objective.directions[0],
            settings.control.target_value,
            settings.control.trials_without_improvement,
        )
        self.context: TrialContext | None = None
        self.progress: TrialProgress | None = None
        self.trackers: TrialTrackers | None = None  # per-trial MLflow / W&B runs (report_to)
        # What the search changes on the trainer, given back when it ends.
        self._user_model_init: Callable[..., torch.nn.Module] | None = None
        self._user_hp_name: Callable[[optuna.trial.BaseTrial], str] | None = None
        self._pre_search_model: torch.nn.Module | None = None
        self._initial_model: InitialModel | None = None
        self._adapters: Adapters | None = None  # with peft.<field> keys
        # isolate_trials: the search call (the child processes resolve it again) and the pickled trainer recipe.
        self.call: dict[str, Any] = {}
        self._recipe: bytes | None = None

    @classmethod
    def prepare(cls, trainer: Trainer, coordinator: Coordinator, **call: Any) -> Search:
        """Resolve and check the settings on every process, then create or load the study on the main one.

        Raises before the study exists in the storage for any input that would only fail once trials run.
        """
        settings, study = coordinator.setup(functools.partial(settle, trainer, coordinator.is_main, call))
        search = cls(trainer, settings, study, coordinator)
        search.call = call
        return search

    # ---- the search ------------------------------------------------------------------------------------------

    def run(self) -> BestRun | list[BestRun]:
        """Run the study's missing trials, write the report, and return the best run (the same on every process)."""
        remaining = self.coordinator.share(self._remaining() if self.study is not None else None)
        if remaining <= 0:
            if self.study is not None and grid_exhausted(self.study):
                logger.info(
                    f"Study {self.settings.storage.study_name!r}: every point of its grid has run "
                    f"({count_finished(self.study)} finished trials); no trial to run"
                )
            elif self.study is not None:
                logger.info(
                    f"Study {self.settings.storage.study_name!r} already has {count_finished(self.study)} finished "
                    f"trials of n_trials={self.settings.control.n_trials}; no trial to run"
                )
        else:
            self.run_trials()
        if self.settings.control.search_report and self.study is not None and self.trainer.is_world_process_zero():
            write_report(self.study, output_dir_of(self.base_args), settings=self.settings)
        if self.base_args.load_best_model_at_end:
            self._load_best_model()
        return self.coordinator.finish_search(self.best_runs)

    def _remaining(self) -> int:
        assert self.study is not None
        # A grid that has run every point runs nothing more: GridSampler would draw a point again.
        if grid_exhausted(self.study):
            return 0
        return self.settings.control.n_trials - count_finished(self.study)

    def run_trials(self) -> None:
        if self.trainer.args.should_save and self.settings.control.save_best_model:
            # A previous run killed in the middle of saving the best model; under the lock, so that another worker's
            # save in progress is not taken for a leftover.
            with best_model_lock(output_dir_of(self.base_args)):
                recover(output_dir_of(self.base_args))
        self.best = BestSoFar(*self.coordinator.share(self._stored_best() if self.coordinator.is_main else None))
        self.trackers = TrialTrackers(
            self.trainer,
            self.study,
            self.settings.storage.study_name,
            self.coordinator.is_main,
            lock=self.settings.storage.claim_lock,  # one parent run per study, across the workers of every machine
        )
        if self.settings.control.isolate_trials:
            # Before _take_trainer changes the trainer: what each trial's process rebuilds (search/isolated.py).
            self._recipe = pickle.dumps(make_recipe(self.trainer, self.call, self.settings, type(self), settle))
        self.context = self._take_trainer()
        interrupted = False
        try:
            # SIGTERM (Slurm, Kubernetes, spot preemption) stops the search as Ctrl-C does (processes/signals.py).
            with interrupt_on_sigterm():
                if self.trackers.active:
                    self.trackers.start()
                self.coordinator.optimize(self.study, self.run_trial, drive=self.drive, stop=self.stop)
        except KeyboardInterrupt:
            interrupted = True
            logger.warning(
                "Interrupted: the running trial is marked FAIL and study "
                f"{self.settings.storage.study_name!r} is consistent; run the same command again to continue it"
            )
            raise
        finally:
            if self.trackers.active:
                self.trackers.end(interrupted=interrupted)
            self._give_trainer_back()

    def drive(self, study: optuna.Study, objective: Callable[[optuna.trial.BaseTrial], Any]) -> None:
        """The main process's loop: `n_trials` is the study's total over every run and worker (search/loop.py)."""
        run_trials(
            study,
            objective,
            n_trials=self.settings.control.n_trials,
            lock=self.settings.storage.claim_lock or local_lock(),
            heartbeat_interval=self.settings.storage.heartbeat_interval,
            timeout=self.settings.control.timeout,
            catch=(
                *catch_for(self.settings.control.catch, self.settings.control.continue_on_oom),
                *((TrialProcessDied,) if self.settings.control.isolate_trials else ()),
            ),
            callbacks=[
                *([self.progress] if self.progress is not None else []),
                *([self.trackers] if self.trackers is not None and self.trackers.active else []),
                *self.settings.control.callbacks,
            ],
            stop=self.stop,
            stop_rule=self.stop_rules.reason if self.stop_rules.active else None,
        )

    # ---- one trial -------------------------------------------------------------------------------------------

    def run_trial(self, trial: optuna.trial.BaseTrial) -> Any:
        """The objective: one trial (search/trial.py), then what follows from its outcome."""
        assert self.context is not None  # set by run_trials
        if self._recipe is not None:
            if self.settings.control.skip_duplicates:
                # A repeat (search/duplicates.py) is recorded here, where the study is: no process starts for it.
                repeated = TrialRun(self.context, trial).repeat_only()
                if repeated is not None:
                    self._after_trial(repeated)
                    return repeated.result()
            # isolate_trials: the same code path below, in a fresh child process (search/isolated.py).
            try:
                value, best = run_isolated(trial, self._recipe, (self.best.value, self.best.run_dir))
            except KeyboardInterrupt:
                if self.study is not None:
                    requeue(self.study, trial.number)  # Ctrl-C/SIGTERM: its place kept, as in-process
                raise
            self.best = BestSoFar(*best)
            return value
        run = TrialRun(self.context, trial)
        outcome = run.execute()
        try:
            # A repeat (skip_duplicates) trained nothing: its twin's model was offered when the twin finished.
            if outcome.state == TrialState.COMPLETE and outcome.duplicate_of is None:
                try:
                    self.offer_best(outcome)
                except (Exception, KeyboardInterrupt) as err:
                    outcome = run.failed(err)
        finally:
            run.close()
            self._after_trial(outcome)
        return outcome.result()

    def _after_trial(self, outcome: TrialOutcome) -> None:
        """An interrupted trial keeps its place in the study (and its checkpoints, where the next run resumes); any
        other trial's checkpoints go unless they hold the best model so far."""
        if outcome.interrupted:
            if self.study is not None:
                requeue(self.study, outcome.number)
            return
        if outcome.uploads is not None:
            outcome.uploads.discard()  # the store keeps a checkpoint only for a trial that may resume
        if outcome.run_dir and not (outcome.state == TrialState.COMPLETE and self.best.run_dir == outcome.run_dir):
            delete_checkpoints(outcome.run_dir, self.trainer.args.should_save)

    # ---- the trainer during the search -----------------------------------------------------------------------

    def _take_trainer(self) -> TrialContext:
        """Set the trainer up for the trials (their model source, run names, progress bar); the trials' context."""
        # Any: transformers types `model`, `model_init` and `hp_name` narrower than the values it accepts for them
        # (None, any nn.Module, a callable).
        trainer: Any = self.trainer
        self._user_model_init = trainer.model_init
        self._pre_search_model = trainer.model
        model_config = getattr(trainer.model, "config", None)
        model_source: Callable[..., torch.nn.Module]
        if self.settings.space.adapters:
            # One base model for every trial (the one the trainer holds: from model= or built from model_init at
            # construction), each trial with a fresh adapter over it.
            self._adapters = Adapters(trainer.model)
            model_source = self._adapters.wrap
        elif trainer.model_init is None:
            # transformers refuses to search without model_init: here every trial starts from the initial weights.
            self._initial_model = InitialModel(trainer.model)
            model_source = self._initial_model
        else:
            model_source = trainer.model_init
            if trainer.model is not None:
                # The model transformers built at init is not trained during the search: keep it off the device.
                trainer.model.to("cpu")
        # Trainer.state.trial_name comes from `hp_name` (transformers' hook): TensorBoard and the other loggers then
        # open one run per trial instead of appending every trial to the first trial's log directory.
        self._user_hp_name = trainer.hp_name
        trainer.hp_name = self.settings.space.hp_name or _run_name
        self.progress = TrialProgress(
            self.study,
            self.settings.control.n_trials,
            trainer=trainer,
            disable=(
                self.base_args.disable_tqdm
                or not trainer.is_world_process_zero()
                or not self.settings.control.show_progress_bar
            ),
        )
        return TrialContext(
            trainer=self.trainer,
            settings=self.settings,
            coordinator=self.coordinator,
            base_args=self.base_args,
            study=self.study,
            model_source=model_source,
            model_config=model_config,
            adapters=self._adapters,
            trackers=self.trackers,
        )

    def _give_trainer_back(self) -> None:
        trainer: Any = self.trainer  # see _take_trainer
        if self.progress is not None:
            self.progress.close()
        trainer.hp_name = self._user_hp_name
        trainer.model_init = self._user_model_init
        apply_arguments(trainer, self.base_args)
        model: torch.nn.Module | None
        if self._adapters is not None:
            model = self._adapters.restore()
        elif self._initial_model is not None:
            model = self._initial_model.restore()
        else:
            model = self._pre_search_model
        if model is not None and trainer.place_model_on_device:
            model = model.to(trainer.args.device)
        trainer.model = trainer.model_wrapped = model

    # ---- the best trial --------------------------------------------------------------------------------------

    def _load_best_model(self) -> None:
        """`load_best_model_at_end=True`: after the search, `trainer.model` is `best_model/` (the best trial's best
        weights, with its config), loaded as a new object; the model the user passed in stays as it was."""
        output_dir = output_dir_of(self.base_args)
        # Every process reads what the main one wrote; sharing its record is also the wait for its last save.
        record = self.coordinator.share(stored_record(output_dir) if self.coordinator.is_main else None)
        model = self.trainer.model
        if record is None or record.get("study_name") != self.settings.storage.study_name:
            logger.warning(
                f"load_best_model_at_end: no best_model/ of study {self.settings.storage.study_name!r} to load"
            )
            return
        if self.settings.space.adapters or not isinstance(model, PreTrainedModel):
            logger.warning(
                f"load_best_model_at_end: trainer.model stays the model before the search; load "
                f"{os.path.join(output_dir, BEST_MODEL_DIR)} yourself (a PEFT adapter: PeftModel.from_pretrained(base, "
                "that folder))"
            )
            return
        best: torch.nn.Module = type(model).from_pretrained(os.path.join(output_dir, BEST_MODEL_DIR))
        if self.trainer.place_model_on_device:
            best = best.to(self.trainer.args.device)
        trainer: Any = self.trainer  # transformers types model narrower than the models it accepts
        trainer.model = trainer.model_wrapped = best
        logger.info(f"load_best_model_at_end: trainer.model is trial {record.get('number')}'s best_model/")

    def _stored_best(self) -> tuple[Any, str | None]:
        assert self.study is not None
        value = best_value(self.study)
        return (value, read(self.study.best_trial).get("run_dir")) if value is not None else (None, None)

    def offer_best(self, outcome: TrialOutcome) -> None:
        """Keep the trial's model as the best one if its value beats every finished trial of the study."""
        if self.settings.objective.multi:
            return
        direction = self.settings.objective.directions[0]
        # Other workers of the study may have found better trials since this worker last looked.
        study_best = self.coordinator.share(best_value(self.study) if self.study is not None else None)
        if study_best is not None and is_better(study_best, self.best.value, direction):
            self.best.value = study_best
        if not is_better(outcome.value, self.best.value, direction):
            return
        if self.settings.control.save_best_model and not self._save_best(outcome, direction):
            return
        previous = self.best.run_dir
        self.best = BestSoFar(outcome.value, outcome.run_dir)
        # Only once the new best is in place: until then the previous best's checkpoints may be all there is of it.
        if previous is not None and previous != outcome.run_dir:
            delete_checkpoints(previous, self.trainer.args.should_save)

    def _save_best(self, outcome: TrialOutcome, direction: str) -> bool:
        """Write the trial's model as `best_model/` unless another worker of the study wrote a better one meanwhile.

        Workers sharing `output_dir` (optuna-trainer workers) compare and replace under one file lock, so that one
        writes at a time and a worse trial never replaces a better one that is not yet told to the study.
        """
        output_dir = output_dir_of(self.base_args)
        lock = best_model_lock(output_dir) if self.coordinator.is_main and self.trainer.args.should_save else None
        if lock is not None:
            lock.acquire()
        try:
            stored = stored_record(output_dir) if lock is not None else None
            on_disk = (
                stored.get("value")
                if stored is not None and stored.get("study_name") == self.settings.storage.study_name
                else None
            )
            on_disk = self.coordinator.share(on_disk)
            if on_disk is not None and not is_better(outcome.value, on_disk, direction):
                self.best.value = on_disk
                return False
            record: dict[str, Any] = {
                "study_name": self.settings.storage.study_name,
                "number": outcome.number,
                "value": outcome.value,
                "params": outcome.params,
            }
            saved = None
            held = outcome.best_weights
            if held is not None and held.held is not None:
                # The weights of the evaluation the value comes from, not those of the last step (best_weights.py).
                held.restore()
                saved = held.on_disk
                step = held.held.step
                per_step = outcome.samples_per_step
                record.update(step=step, samples=step * per_step if per_step else None)
            save_best_model(self.trainer, output_dir, record, saved=saved, publish=self._publisher(record))
            return True
        finally:
            if lock is not None:
                lock.release()

    def _publisher(self, record: dict[str, Any]) -> Callable[[str], None] | None:
        """With an artifact store, what uploads a new best model before it replaces the local one (on the process
        that saves; a failed upload fails the trial and leaves the previous best where it was)."""
        artifacts = self.settings.storage.artifacts
        study = self.study
        if artifacts is None or study is None or not self.trainer.args.should_save:
            return None
        lock = self.settings.storage.claim_lock or local_lock()

        def publish(folder: str) -> None:
            publish_best_model(artifacts, study, folder, record, lock)

        return publish

    def best_runs(self) -> BestRun | list[BestRun]:
        """transformers' `BestRun` of the best trial (the Pareto front for several objectives)."""
        study = self.study
        assert study is not None
        counts = {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
        if not counts["COMPLETE"]:
            # Out-of-memory trials recorded infeasible are PRUNED (training/faults.py): said apart.
            oom = sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("infeasible"))
            raise NoCompletedTrialError(
                f"Study {self.settings.storage.study_name!r} has no completed trial: {counts['PRUNED']} pruned"
                + (f" ({oom} of them out of memory: lower the batch size range in hp_space)" if oom else "")
                + f", {counts['FAIL']} failed, {counts['RUNNING']} running. Loosen the pruner (e.g. more "
                "n_startup_trials or n_warmup_steps) or fix the failures (see each trial's user attribute 'fail_reason')"
            )
        if len(study.directions) > 1:
            return [BestRun(str(t.number), t.values, t.params) for t in study.best_trials]
        best = study.best_trial
        return BestRun(str(best.number), cast(float, best.value), best.params)


def _run_name(trial: optuna.trial.BaseTrial) -> str:
    return f"run-{trial.number}"
