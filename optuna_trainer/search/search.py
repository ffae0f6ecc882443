"""One hyperparameter search: settings -> study -> trials -> result.

`Search.prepare` resolves the settings from the trainer's arguments and the call, checks everything that can be
checked without training, and creates (or loads) the study; `Search.run` runs the study's missing trials through the
exact-budget loop (search/loop.py), one `TrialRun` each (search/trial.py), then writes the report and returns transformers'
`BestRun`. One process and N processes run this same code: every point where they must agree goes through the
coordinator (processes/coordinator.py).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import optuna
import torch
from transformers import PreTrainedModel, Trainer, TrainingArguments
from transformers.trainer_utils import BestRun

from optuna_trainer.arguments import output_dir_of
from optuna_trainer.exceptions import NoCompletedTrialError
from optuna_trainer.output.best_model import BEST_MODEL_DIR, best_model_lock, recover, save_best_model, stored_record
from optuna_trainer.output.progress import TrialProgress
from optuna_trainer.output.report import write_report
from optuna_trainer.output.trackers import TrialTrackers
from optuna_trainer.processes.coordinator import Coordinator
from optuna_trainer.processes.signals import interrupt_on_sigterm
from optuna_trainer.processes.worker_env import launch_env
from optuna_trainer.search.checks import check_before_study, check_output_dir
from optuna_trainer.search.compatibility import check_continuation
from optuna_trainer.search.control import StopRules, enqueue_arguments
from optuna_trainer.search.loop import StopRequest, count_finished, grid_retry_waiting, run_trials
from optuna_trainer.search.settings import SearchSettings, resolve_settings
from optuna_trainer.search.trial import TrialRun, apply_arguments, delete_checkpoints
from optuna_trainer.space.objective import is_better
from optuna_trainer.space.samplers import continued_sampler
from optuna_trainer.study.claims import local_lock
from optuna_trainer.study.storage import MAX_RETRY, default_storage_url
from optuna_trainer.training.adapters import Adapters, has_adapter_keys
from optuna_trainer.training.faults import catch_for
from optuna_trainer.training.models import InitialModel

if TYPE_CHECKING:
    from collections.abc import Callable

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
    """

    def __init__(
        self, trainer: Trainer, settings: SearchSettings, study: optuna.Study | None, coordinator: Coordinator
    ) -> None:
        self.trainer = trainer
        self.settings = settings
        self.study = study
        self.coordinator = coordinator
        self.base_args: TrainingArguments = trainer.args
        self.model_config = getattr(trainer.model, "config", None)
        self.best = BestSoFar()
        self.stop = StopRequest()
        self.stop_rules = StopRules(
            settings.objective.directions[0], settings.target_value, settings.trials_without_improvement
        )
        # Set while trials run (`_take_trainer`): where each trial's model comes from, and the trials' progress bar.
        self.model_source: Callable[..., torch.nn.Module] | None = None
        self.progress: TrialProgress | None = None
        # What the search changes on the trainer, given back when it ends.
        self._user_model_init: Callable[..., torch.nn.Module] | None = None
        self._user_hp_name: Callable[[optuna.trial.BaseTrial], str] | None = None
        self._pre_search_model: torch.nn.Module | None = None
        self._initial_model: InitialModel | None = None
        self.adapters: Adapters | None = None  # with peft.<field> keys
        self.trackers: TrialTrackers | None = None  # per-trial MLflow / W&B runs (report_to)

    @classmethod
    def prepare(cls, trainer: Trainer, coordinator: Coordinator, **call: Any) -> Search:
        """Resolve and check the settings on every process, then create or load the study on the main one.

        Raises before the study exists in the storage for any input that would only fail once trials run.
        """
        settings, study = coordinator.setup(functools.partial(settle, trainer, coordinator.is_main, call))
        return cls(trainer, settings, study, coordinator)

    # ---- the search ------------------------------------------------------------------------------------------

    def run(self) -> BestRun | list[BestRun]:
        """Run the study's missing trials, write the report, and return the best run (the same on every process)."""
        remaining = self.coordinator.share(self._remaining() if self.study is not None else None)
        if remaining <= 0:
            if self.study is not None and grid_exhausted(self.study):
                logger.info(
                    f"Study {self.settings.study_name!r}: every point of its grid has run "
                    f"({count_finished(self.study)} finished trials); no trial to run"
                )
            elif self.study is not None:
                logger.info(
                    f"Study {self.settings.study_name!r} already has {count_finished(self.study)} finished trials of "
                    f"n_trials={self.settings.n_trials}; no trial to run"
                )
        else:
            self.run_trials()
        if self.settings.search_report and self.study is not None and self.trainer.is_world_process_zero():
            write_report(self.study, output_dir_of(self.base_args), settings=self.settings)
        if self.base_args.load_best_model_at_end:
            self._load_best_model()
        return self.coordinator.finish_search(self.best_runs)

    def _remaining(self) -> int:
        assert self.study is not None
        # A grid that has run every point runs nothing more: GridSampler would draw a point again.
        if grid_exhausted(self.study):
            return 0
        return self.settings.n_trials - count_finished(self.study)

    def run_trials(self) -> None:
        if self.trainer.args.should_save and self.settings.save_best_model:
            # A previous run killed in the middle of saving the best model; under the lock, so that another worker's
            # save in progress is not taken for a leftover.
            with best_model_lock(output_dir_of(self.base_args)):
                recover(output_dir_of(self.base_args))
        self.best = BestSoFar(*self.coordinator.share(self._stored_best() if self.coordinator.is_main else None))
        self._take_trainer()
        self.trackers = TrialTrackers(
            self.trainer,
            self.study,
            self.settings.study_name,
            self.coordinator.is_main,
            lock=self.settings.claim_lock,  # one parent run per study, across the workers of every machine
        )
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
                f"Interrupted: the running trial is marked FAIL and study {self.settings.study_name!r} is consistent; "
                "run the same command again to continue it"
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
            n_trials=self.settings.n_trials,
            lock=self.settings.claim_lock or local_lock(),
            heartbeat_interval=self.settings.heartbeat_interval,
            timeout=self.settings.timeout,
            catch=catch_for(self.settings.catch, self.settings.continue_on_oom),
            callbacks=[
                *([self.progress] if self.progress is not None else []),
                *([self.trackers] if self.trackers is not None and self.trackers.active else []),
                *self.settings.callbacks,
            ],
            stop=self.stop,
            stop_rule=self.stop_rules.reason if self.stop_rules.active else None,
        )

    def requeue(self, number: int) -> None:
        """Queue trial `number` again with its parameters (and grid point), as a heartbeat storage does for a killed
        worker's trial: the next run continues it from its last checkpoint."""
        if self.study is None:
            return
        frozen = next((t for t in self.study.get_trials(deepcopy=False) if t.number == number), None)
        if frozen is None:
            return
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(self.study, frozen)
        logger.info(f"Trial {number} is queued again with its parameters: the next run continues it")

    def run_trial(self, trial: optuna.trial.BaseTrial) -> Any:
        """The objective: one trial, prepared, run and finished (search/trial.py)."""
        return TrialRun(self, trial).execute()

    # ---- the trainer during the search -----------------------------------------------------------------------

    def _take_trainer(self) -> None:
        # Any: transformers types `model`, `model_init` and `hp_name` narrower than the values it accepts for them
        # (None, any nn.Module, a callable).
        trainer: Any = self.trainer
        self._user_model_init = trainer.model_init
        self._pre_search_model = trainer.model
        if self.settings.adapters:
            # One base model for every trial (the one the trainer holds: from model= or built from model_init at
            # construction), each trial with a fresh adapter over it.
            self.adapters = Adapters(trainer.model)
            self.model_source = self.adapters.wrap
        elif trainer.model_init is None:
            # transformers refuses to search without model_init: here every trial starts from the initial weights.
            self._initial_model = InitialModel(trainer.model)
            self.model_source = self._initial_model
        else:
            self.model_source = trainer.model_init
            if trainer.model is not None:
                # The model transformers built at init is not trained during the search: keep it off the device.
                trainer.model.to("cpu")
        # Trainer.state.trial_name comes from `hp_name` (transformers' hook): TensorBoard and the other loggers then
        # open one run per trial instead of appending every trial to the first trial's log directory.
        self._user_hp_name = trainer.hp_name
        trainer.hp_name = self.settings.hp_name or _run_name
        self.progress = TrialProgress(
            self.study,
            self.settings.n_trials,
            trainer=trainer,
            disable=(
                self.base_args.disable_tqdm
                or not trainer.is_world_process_zero()
                or not self.settings.show_progress_bar
            ),
        )

    def _give_trainer_back(self) -> None:
        trainer: Any = self.trainer  # see _take_trainer
        if self.progress is not None:
            self.progress.close()
        trainer.hp_name = self._user_hp_name
        trainer.model_init = self._user_model_init
        apply_arguments(trainer, self.base_args)
        model: torch.nn.Module | None
        if self.adapters is not None:
            model = self.adapters.restore()
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
        if record is None or record.get("study_name") != self.settings.study_name:
            logger.warning(f"load_best_model_at_end: no best_model/ of study {self.settings.study_name!r} to load")
            return
        if self.settings.adapters or not isinstance(model, PreTrainedModel):
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
        return (value, self.study.best_trial.user_attrs.get("run_dir")) if value is not None else (None, None)

    def offer_best(self, run: TrialRun, value: Any) -> None:
        """Keep `run`'s model as the best one if its value beats every finished trial of the study."""
        if self.settings.objective.multi:
            return
        direction = self.settings.objective.directions[0]
        # Other workers of the study may have found better trials since this worker last looked.
        study_best = self.coordinator.share(best_value(self.study) if self.study is not None else None)
        if study_best is not None and is_better(study_best, self.best.value, direction):
            self.best.value = study_best
        if not is_better(value, self.best.value, direction):
            return
        if self.settings.save_best_model and not self._save_best(run, value, direction):
            return
        previous = self.best.run_dir
        self.best = BestSoFar(value, run.run_dir)
        # Only once the new best is in place: until then the previous best's checkpoints may be all there is of it.
        if previous is not None and previous != run.run_dir:
            delete_checkpoints(previous, self.trainer.args.should_save)

    def _save_best(self, run: TrialRun, value: Any, direction: str) -> bool:
        """Write `run`'s model as `best_model/` unless another worker of the study wrote a better one meanwhile.

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
                if stored is not None and stored.get("study_name") == self.settings.study_name
                else None
            )
            on_disk = self.coordinator.share(on_disk)
            if on_disk is not None and not is_better(value, on_disk, direction):
                self.best.value = on_disk
                return False
            record: dict[str, Any] = {
                "study_name": self.settings.study_name,
                "number": run.trial.number,
                "value": value,
                "params": run.values,
            }
            saved = None
            if run.best_weights is not None and run.best_weights.held is not None:
                # The weights of the evaluation the value comes from, not those of the last step (training/best_weights.py).
                run.best_weights.restore()
                saved = run.best_weights.on_disk
                step = run.best_weights.held.step
                per_step = run.trial.user_attrs.get("samples_per_step")
                record.update(step=step, samples=step * per_step if per_step else None)
            save_best_model(self.trainer, output_dir, record, saved=saved)
            return True
        finally:
            if lock is not None:
                lock.release()

    def best_runs(self) -> BestRun | list[BestRun]:
        """transformers' `BestRun` of the best trial (the Pareto front for several objectives)."""
        study = self.study
        assert study is not None
        counts = {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in optuna.trial.TrialState}
        if not counts["COMPLETE"]:
            raise NoCompletedTrialError(
                f"Study {self.settings.study_name!r} has no completed trial: {counts['PRUNED']} pruned, "
                f"{counts['FAIL']} failed, {counts['RUNNING']} running. Loosen the pruner (e.g. more n_startup_trials "
                "or n_warmup_steps) or fix the failures (see each trial's user attribute 'fail_reason')"
            )
        if len(study.directions) > 1:
            return [BestRun(str(t.number), t.values, t.params) for t in study.best_trials]
        best = study.best_trial
        return BestRun(str(best.number), cast(float, best.value), best.params)


def settle(trainer: Trainer, is_main: bool, call: dict[str, Any]) -> tuple[SearchSettings, optuna.Study | None]:
    """Resolve and check the settings of a `hyperparameter_search(**call)`; on the main process, print them and
    create (or load) the study."""
    # First: the default storage is a file under output_dir, and every trial writes there whatever the storage.
    check_output_dir(trainer.args)
    if not is_main:
        # Only the main process opens the storage; the others check everything else the same way.
        call = {**call, "storage": "memory"}
    elif launch_env() is not None:
        call = {**call, "storage": launched_storage(trainer.args, call)}
    settings = resolve_settings(trainer.args, has_compute_metrics=trainer.compute_metrics is not None, **call)
    keys = check_before_study(trainer, settings)
    settings.adapters = has_adapter_keys(keys)
    if not is_main:
        return settings, None
    study = create_study(settings)
    check_continuation(study, settings)
    continue_sampler(study, settings)
    launched = launch_env()
    if launched is not None and settings.storage_url is not None:
        launched.announce(
            storage=settings.storage_url or default_storage_url(output_dir_of(trainer.args)),
            study_name=settings.study_name,
            output_dir=output_dir_of(trainer.args),
            n_trials=settings.n_trials,
        )
    if settings.enqueue_arguments:
        note = enqueue_arguments(study, settings.hp_space, keys, trainer.args, trainer.model)
        if note is not None:
            settings.notes.append(note)
    settings.log()
    return settings, study


def launched_storage(args: TrainingArguments, call: dict[str, Any]) -> Any:
    """The storage of a worker of `optuna-trainer workers` (processes/launcher.py): the launcher's `--storage`, else the
    search's own, else a journal file under output_dir (it takes concurrent writers; the SQLite default does not)."""
    launched = launch_env()
    assert launched is not None
    given = call.get("storage", getattr(args, "storage", None))
    storage = launched.storage or given or launched.default_storage(output_dir_of(args))
    if isinstance(storage, str) and storage.strip().lower() in ("memory", ":memory:"):
        raise ValueError(
            "storage: 'memory' cannot be shared by the workers of `optuna-trainer workers`; leave storage unset "
            "(a journal file under output_dir) or give a file or database URL"
        )
    return storage


def continue_sampler(study: optuna.Study, settings: SearchSettings) -> None:
    """A seeded sampler continuing a study must not draw the values of the study's trials again: it continues with
    its seed advanced by the number of trials (the same commands still give the same values, run after run)."""
    existing = len(study.trials)
    sampler = continued_sampler(settings.sampler_spec, settings.declarative, existing)
    if sampler is None:
        return
    study.sampler = settings.sampler = sampler
    settings.notes.append(
        f"sampler: the study has {existing} trials, so its seed continues as seed + {existing} (the given seed again "
        "would draw their values again)"
    )


def grid_exhausted(study: optuna.Study) -> bool:
    """Every grid point has run (a failed point counts as run to Optuna: its queued retry does not)."""
    return (
        isinstance(study.sampler, optuna.samplers.GridSampler)
        and study.sampler.is_exhausted(study)
        and not grid_retry_waiting(study)
    )


def create_study(settings: SearchSettings) -> optuna.Study:
    """Create the study, or load it to continue it (unless `load_if_exists=False`)."""
    try:
        return optuna.create_study(
            storage=settings.storage,
            sampler=settings.sampler,
            pruner=settings.pruner,
            study_name=settings.study_name,
            directions=[optuna.study.StudyDirection[d.upper()] for d in settings.objective.directions],
            load_if_exists=settings.load_if_exists,
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise ValueError(
            f"load_if_exists=False: study {settings.study_name!r} already exists in {settings.storage_description}; "
            "give a new study_name or output_dir, or load_if_exists=True to continue it"
        ) from None


def best_value(study: optuna.Study) -> float | None:
    """The study's best value, None when it has several objectives or no completed trial yet."""
    if len(study.directions) > 1:
        return None
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return study.best_value if complete else None


def _run_name(trial: optuna.trial.BaseTrial) -> str:
    return f"run-{trial.number}"
