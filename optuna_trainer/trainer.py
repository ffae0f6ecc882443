"""`OptunaTrainer`: a drop-in `Trainer` whose `hyperparameter_search()` runs a whole Optuna study from its arguments.

Supported transformers: >=5.24,<6 (see pyproject.toml). The search drives `Trainer.train()` through public hooks only
(`model_init` via `call_model_init`, a `TrainerCallback` for report/prune, `evaluate`, `save_model`,
`create_accelerator_and_postprocess`); it never sets `hp_search_backend`, so transformers' own Optuna code paths
(`_hp_search_setup`, `_report_to_hp_search`) stay inactive. The one private name it touches is the attribute
`_train_batch_size`, which `Trainer` reads for the train dataloader and which transformers' own search refreshes the
same way when the batch size is a search parameter.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import shutil
import socket
import time
import weakref
from collections.abc import Callable
from typing import Any

import optuna
import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, BestRun, HPSearchBackend

from .arguments import OptunaTrainingArguments
from .checks import check_before_study
from .faults import NonFiniteLossCallback, catch_for, trial_failure
from .claims import local_lock
from .distributed import Coordinator, coordinator_for
from .memory import release_host_memory
from .models import InitialModel, apply_config_values
from .progress import TrialProgress
from .pruning import Decide, OptunaPruningCallback
from .report import write_report
from .resume import find_resume_point
from .search_space import SearchSpace, check_key, check_model_keys, split_params
from .settings import SearchSettings, resolve_settings
from .workers import run_trials

logger = logging.getLogger(__name__)

BEST_MODEL_DIR = "best_model"


class NoCompletedTrialError(RuntimeError):
    """Raised when a search ends without any completed trial (every one was pruned or failed)."""


def upgrade_arguments(args: TrainingArguments | None) -> OptunaTrainingArguments:
    """Accept a plain `TrainingArguments` (or None) so that swapping the trainer class in existing code just works."""
    if args is None:
        return OptunaTrainingArguments(output_dir="tmp_trainer")
    if isinstance(args, OptunaTrainingArguments):
        return args
    if not isinstance(args, TrainingArguments):
        raise TypeError(f"args: expected TrainingArguments or OptunaTrainingArguments, got {type(args).__name__}")
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
    return OptunaTrainingArguments(**values)


class OptunaTrainer(Trainer):
    """A `Trainer` whose `hyperparameter_search()` runs an Optuna study declared in `OptunaTrainingArguments`.

    `train()`, `evaluate()` and every other method behave as in `Trainer`. After a search, `trainer.study` is the
    Optuna study and `output_dir/best_model` holds the best trial's model.
    """

    def __init__(self, model: Any = None, args: TrainingArguments | None = None, *trainer_args: Any, **kwargs: Any):
        args = upgrade_arguments(args)
        # Set before Trainer.__init__, which calls `call_model_init` once when a `model_init` is given.
        self._trial_model_values: dict[str, Any] = {}
        self.study: optuna.Study | None = None
        super().__init__(model, args, *trainer_args, **kwargs)

    # ---- model per trial -------------------------------------------------------------------------------------

    def call_model_init(self, trial: optuna.Trial | dict[str, Any] | None = None) -> torch.nn.Module:
        """Build the trial's model (user `model_init`, or the initial weights) and apply its `model.*` values."""
        model = super().call_model_init(trial)
        return apply_config_values(model, self._trial_model_values)

    # ---- search ----------------------------------------------------------------------------------------------

    def hyperparameter_search(
        self,
        hp_space: Callable[[optuna.Trial], dict[str, Any]] | dict | str | None = None,
        compute_objective: Callable[[dict[str, float]], Any] | None = None,
        n_trials: int | None = None,
        direction: str | list[str] | None = None,
        backend: str | HPSearchBackend | None = None,
        hp_name: Callable[[optuna.Trial], str] | None = None,
        **kwargs: Any,
    ) -> BestRun | list[BestRun]:
        """Run the Optuna study declared by the arguments; anything passed here overrides them.

        Args:
            hp_space: a declarative space (dict, YAML/JSON path or JSON string) or `hp_space(trial) -> dict`.
                Defaults to `args.hp_space`.
            compute_objective: metrics -> value (or a tuple for several objectives). Defaults to
                `args.objective_metric`, then `metric_for_best_model`, then `eval_accuracy`.
            n_trials: the study's number of trials. Defaults to `args.n_trials`.
            direction: "minimize", "maximize", or a list for several objectives. Defaults to `args.direction`.
            backend: only "optuna" (or None).
            hp_name: trial -> run directory name under `output_dir` (default `run-{number}`).
            kwargs: `sampler`, `pruner`, `storage`, `study_name`, `timeout`, `catch`, `callbacks`, `gc_after_trial`.

        Returns:
            transformers' `BestRun` of the best trial (a list of them, the Pareto front, for several objectives).
            Under `accelerate launch`/torchrun every process returns the same value; only the main process holds
            `trainer.study` (None on the others, see docs/distributed.md).
        """
        if backend is not None and HPSearchBackend(backend) != HPSearchBackend.OPTUNA:
            raise ValueError(f"backend: OptunaTrainer searches with optuna only, got {backend!r}")
        base_args: OptunaTrainingArguments = self.args
        # Several processes (DDP): the main process owns the study, the others follow it (distributed.py).
        coordinator = coordinator_for(base_args)
        follower = coordinator is not None and not coordinator.is_main

        def prepare() -> tuple[SearchSettings, optuna.Study | None]:
            settings = resolve_settings(
                base_args,
                hp_space=hp_space,
                compute_objective=compute_objective,
                n_trials=n_trials,
                direction=direction,
                hp_name=hp_name,
                # Only the main process opens the storage; the others check everything else the same way.
                **({**kwargs, "storage": "memory"} if follower else kwargs),
            )
            # Everything that can be checked without training is checked before the study exists in the storage.
            check_before_study(self, settings)
            if follower:
                return settings, None
            settings.log()
            study = optuna.create_study(
                storage=settings.storage,
                sampler=settings.sampler,
                pruner=settings.pruner,
                study_name=settings.study_name,
                directions=settings.objective.directions,
                load_if_exists=True,
            )
            return settings, study

        settings, study = prepare() if coordinator is None else coordinator.setup(prepare)
        self.study = study
        remaining = settings.n_trials - _count_finished(study) if study is not None else 0
        if coordinator is not None:
            remaining = coordinator.share(remaining)
        if remaining <= 0:
            if study is not None:
                logger.info(
                    f"Study {settings.study_name!r} already has {_count_finished(study)} finished trials of "
                    f"n_trials={settings.n_trials}; no trial to run"
                )
        else:
            self._run_study(study, settings, base_args, coordinator)
        if base_args.search_report and study is not None and self.is_world_process_zero():
            write_report(study, base_args.output_dir, settings=settings)
        if coordinator is None:
            return _best_runs(study, settings)
        return coordinator.finish_search(lambda: _best_runs(study, settings))

    def _run_study(
        self,
        study: optuna.Study | None,
        settings: SearchSettings,
        base_args: OptunaTrainingArguments,
        coordinator: Coordinator | None = None,
    ) -> None:
        user_model_init = self.model_init
        pre_search_model = self.model
        initial_model = None
        if user_model_init is None:
            initial_model = InitialModel(self.model)
            self.model_init = lambda: initial_model()
        elif pre_search_model is not None:
            # The model transformers built at init is not trained during the search: keep it off the device.
            pre_search_model.to("cpu")
        state = _SearchState(output_dir=base_args.output_dir, model_config=getattr(pre_search_model, "config", None))
        if study is not None and _best_value(study) is not None:
            state.best_value = study.best_value
            state.best_run_dir = study.best_trial.user_attrs.get("run_dir")
        # Trainer.state.trial_name comes from `hp_name` (transformers' hook): TensorBoard and the other loggers then
        # open one run per trial instead of appending every trial to the first trial's log directory.
        user_hp_name = self.hp_name
        self.hp_name = settings.hp_name or (lambda trial: f"run-{trial.number}")
        progress = TrialProgress(
            study, settings.n_trials, trainer=self, disable=base_args.disable_tqdm or not self.is_world_process_zero()
        )
        try:
            objective = lambda trial: self._run_trial(trial, settings, base_args, state)  # noqa: E731

            def drive(study: optuna.Study, func: Callable[[optuna.Trial], Any]) -> None:
                # `n_trials` is the study's total over every run and worker: see workers.py for how it is kept exact.
                run_trials(
                    study,
                    func,
                    n_trials=settings.n_trials,
                    lock=settings.claim_lock or local_lock(),
                    heartbeat_interval=settings.heartbeat_interval,
                    timeout=settings.timeout,
                    catch=catch_for(settings.catch, base_args.continue_on_oom),
                    callbacks=[progress, *settings.callbacks],
                    gc_after_trial=settings.gc_after_trial,
                )

            if coordinator is None:
                assert study is not None
                drive(study, objective)
            else:
                state.decide, state.share, state.is_main = coordinator.decide, coordinator.share, coordinator.is_main
                state.best_value, state.best_run_dir = coordinator.share((state.best_value, state.best_run_dir))
                coordinator.optimize(study, objective, drive=drive, gc_after_trial=settings.gc_after_trial)
        except KeyboardInterrupt:
            logger.warning(
                f"Interrupted: the running trial is marked FAIL and study {settings.study_name!r} is consistent; run "
                "the same command again to continue it"
            )
            raise
        finally:
            progress.close()
            self.hp_name = user_hp_name
            self.model_init = user_model_init
            self._trial_model_values = {}
            self._set_args(base_args)
            self.model = initial_model.restore() if initial_model is not None else pre_search_model
            if self.model is not None and self.place_model_on_device:
                self.model = self.model.to(self.args.device)
            self.model_wrapped = self.model

    def _set_args(self, args: OptunaTrainingArguments) -> None:
        self.args = args
        # Batch size, accumulation steps and mixed precision may differ per trial: rebuild what depends on them,
        # as transformers' own `_hp_search_setup` does.
        self.create_accelerator_and_postprocess()
        self._train_batch_size = args.train_batch_size

    def _run_trial(
        self,
        trial: optuna.Trial,
        settings: SearchSettings,
        base_args: OptunaTrainingArguments,
        state: _SearchState,
    ) -> Any:
        start = time.monotonic()
        values = self._suggest(trial, settings, state)
        args_values, model_values = split_params(values)
        run_name = settings.hp_name(trial) if settings.hp_name is not None else f"run-{trial.number}"
        run_dir = os.path.join(base_args.output_dir, run_name)
        # A trial re-queued after its worker died continues in the original's run directory, from its checkpoint.
        number = trial.number  # collective under DDP (SyncTrial): read it on every process
        resume = state.share(find_resume_point(self.study, number) if state.is_main else None)
        if resume is not None and resume.checkpoint is not None:
            run_dir = resume.run_dir
            trial.set_user_attr("resumed_from_checkpoint", resume.checkpoint)
        trial.set_user_attr("run_dir", run_dir)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        self._set_args(base_args.trial_arguments(args_values, output_dir=run_dir))
        self._trial_model_values = model_values
        objective = dataclasses.replace(settings.objective, history=[])
        callback = OptunaPruningCallback(trial, objective, prune=not objective.multi, decide=state.decide)
        self.add_callback(callback)
        if resume is not None and resume.history and not objective.multi:
            for step, value in resume.history:
                trial.report(value, step)
                objective.record(step, value)
        # A NaN/inf training loss ends the trial through the pruning callback's stop (recorded as pruned).
        shared = None if state.decide is _same_decision else state.decide
        guard = NonFiniteLossCallback(callback._stop, lambda: self.model, decide=shared)
        self.add_callback(guard)
        finished = False
        try:
            self.train(resume_from_checkpoint=resume.checkpoint if resume is not None else None, trial=trial)
            if not objective.history:
                # No evaluation during training: evaluate once at the end (nothing left to prune).
                callback.prune = False
                self.evaluate()
            trial.set_user_attr("steps", self.state.global_step)
            callback.check_pruned()
            value = self._trial_value(callback, objective)
            finished = True
            if not objective.multi:
                # Other workers of the study may have found better trials since this worker last looked.
                study_best = state.share(_best_value(self.study) if state.is_main else None)
                if study_best is not None and _is_better(study_best, state.best_value, objective.directions[0]):
                    state.best_value = study_best
            if not objective.multi and _is_better(value, state.best_value, objective.directions[0]):
                state.best_value = value
                self._save_best(trial, value, values, run_dir, state)
            return value
        except optuna.TrialPruned:
            trial.set_user_attr("pruned_at_step", callback.pruned_at)
            trial.set_user_attr("stopped_reason", callback.stopped_reason)
            raise
        except (Exception, KeyboardInterrupt) as err:
            failure = trial_failure(trial, err, base_args.continue_on_oom, catch=settings.catch)
            if failure is err:
                raise
            raise failure from None
        finally:
            trial.set_user_attr("seconds", round(time.monotonic() - start, 3))
            if self.state is not None and "steps" not in trial.user_attrs:
                trial.set_user_attr("steps", self.state.global_step)
            if self.state is not None and self.state.max_steps:
                trial.set_user_attr("max_steps", self.state.max_steps)  # planned steps: the report's steps saved
            self.remove_callback(callback)
            guard.close()
            self.remove_callback(guard)
            self._release_memory()
            if not (finished and state.best_run_dir == run_dir):
                _delete_checkpoints(run_dir, self.args.should_save)

    def _suggest(self, trial: optuna.Trial, settings: SearchSettings, state: _SearchState) -> dict[str, Any]:
        if isinstance(settings.hp_space, SearchSpace):
            return settings.hp_space.suggest(trial)
        values = settings.hp_space(trial)
        if not isinstance(values, dict):
            raise TypeError(f"hp_space: the callable must return a dict of name -> value, got {type(values).__name__}")
        for key, value in values.items():
            check_key(key, type(self.args), value=value)
        check_model_keys(values, state.model_config)
        return values

    def _trial_value(self, callback: OptunaPruningCallback, objective: Any) -> Any:
        if objective.compute_objective is not None and callback.last_metrics is not None:
            # A user objective may read trainer.state (the seed's `best_metric if not None else eval_accuracy`),
            # which Trainer updates only after the evaluation callbacks ran: read it once more now that it is final.
            value = objective(callback.last_metrics)
            if _is_finite(value):
                objective.record(self.state.global_step, value)
        return objective.best()

    def _save_best(
        self, trial: optuna.Trial, value: float, params: dict[str, Any], run_dir: str, state: _SearchState
    ) -> None:
        previous = state.best_run_dir
        state.best_run_dir = run_dir
        if previous is not None and previous != run_dir:
            _delete_checkpoints(previous, self.args.should_save)
        if not self.args.save_best_model:
            return
        best_dir = os.path.join(state.output_dir, BEST_MODEL_DIR)
        self.save_model(best_dir)
        if self.args.should_save:
            import json

            with open(os.path.join(best_dir, "trial.json"), "w", encoding="utf-8") as f:
                json.dump({"number": trial.number, "value": value, "params": params}, f, indent=2, default=str)

    def _release_memory(self) -> None:
        # transformers' search keeps the optimizer, scheduler and wrapped model of a pruned trial alive (it raises out
        # of the loop); drop every reference the trainer holds before the next trial builds its own.
        model = weakref.ref(self.model) if self.model is not None else None
        self.model_wrapped = self.model = None
        self.optimizer = self.lr_scheduler = None
        handler = self.callback_handler  # hands the model and optimizer to callbacks, and keeps them
        handler.model = handler.optimizer = handler.lr_scheduler = handler.train_dataloader = None
        # The accelerator holds the prepared model, optimizer and dataloaders too: a fresh one (as every trial gets in
        # _set_args) drops them. That frees the model and optimizer at once when nothing else refers to them (a
        # transformers model holds no reference cycles), so the full collection (0.2-1 s per trial with torch loaded,
        # docs/benchmarks.md figure 1) runs only when the model is still alive, e.g. kept by a user's cycle.
        self.create_accelerator_and_postprocess()
        if model is not None and model() is not None:
            gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        # Freed host pages stay mapped by glibc (the RSS would stay at the first trial's peak): hand them back.
        release_host_memory()


def _same_decision(outcome: Any) -> Any:
    return outcome


@dataclasses.dataclass
class _SearchState:
    output_dir: str
    model_config: Any = None
    best_value: Any = None
    best_run_dir: str | None = None
    # Shares each pruning decision between processes (the identity in one process).
    decide: Decide = _same_decision
    # Shares a value computed on the main process (the identity in one process); only the main process reads the study.
    share: Callable[[Any], Any] = _same_decision
    is_main: bool = True


_FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def _count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=_FINISHED))


def _best_value(study: optuna.Study) -> float | None:
    if study._is_multi_objective():
        return None
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return study.best_value if complete else None


def _is_finite(value: Any) -> bool:
    if isinstance(value, tuple):
        return all(math.isfinite(v) for v in value)
    return value is not None and math.isfinite(value)


def _is_better(value: Any, best: Any, direction: str) -> bool:
    if best is None:
        return True
    return value > best if direction == "maximize" else value < best


def _delete_checkpoints(run_dir: str, should_save: bool) -> None:
    if not should_save or not os.path.isdir(run_dir):
        return
    for name in os.listdir(run_dir):
        if name.startswith(PREFIX_CHECKPOINT_DIR):
            shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)


def _best_runs(study: optuna.Study, settings: SearchSettings) -> BestRun | list[BestRun]:
    counts = {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in optuna.trial.TrialState}
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        raise NoCompletedTrialError(
            f"Study {settings.study_name!r} has no completed trial: {counts['PRUNED']} pruned, {counts['FAIL']} failed, "
            f"{counts['RUNNING']} running. Loosen the pruner (e.g. more n_startup_trials or n_warmup_steps) or fix "
            "the failures (see each trial's user attribute 'fail_reason')"
        )
    if settings.objective.multi:
        return [BestRun(str(t.number), t.values, t.params) for t in study.best_trials]
    best = study.best_trial
    return BestRun(str(best.number), best.value, best.params)
