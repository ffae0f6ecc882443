"""Per-trial runs in the experiment trackers transformers reports to: MLflow and Weights & Biases.

With `report_to` holding `mlflow` or `wandb`, transformers' own callbacks (`MLflowCallback`, `WandbCallback`) log each
trial's training; on their own they start one run for the whole search and log every later trial into it, or into
the run of the trial before (transformers issue 11944). Here every trial is a run of its own, grouped under the study:

- MLflow: a parent run named after the study (reopened when the study continues: its id is a study user attribute)
  and one nested run per trial (transformers' `MLflowCallback`, fresh for each trial, with `MLFLOW_NESTED_RUN`);
- W&B: one run per trial named `trial-<number>` in a group named after the study (`WANDB_RUN_GROUP`, `WANDB_NAME`);

With several workers on one study (`optuna-trainer workers N`) there is still one MLflow parent run: the first worker
creates it under a lock that every worker of the study takes (the study's claim lock where the search passes it, else
a file lock under `output_dir`), and the others reopen it. A new SQLite tracking store (MLflow's default,
`sqlite:///mlflow.db`) is created by one process at a time: MLflow creates its tables on first open, and two workers
doing so at once fail with `OperationalError`. A tracking server that cannot be reached fails the search at its
start, with the tracking URI's password masked (`MLFLOW_TRACKING_URI` may hold one: `http://user:pass@host`).

and once Optuna has told the trial, its run gets the trial's number, state (`optuna.state`: COMPLETE, PRUNED, FAIL),
value, parameters and intermediate values (`optuna.intermediate` at each pruning step), then it is closed: a
pruned or failed trial is closed as KILLED / FAILED in MLflow and with exit code 1 (failed) in W&B. A trial that
failed before training began gets a run all the same. Only the main process logs, as in transformers.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import filelock
import optuna
from optuna.trial import FrozenTrial, TrialState
from transformers import Trainer, TrainerCallback

from optuna_trainer.study.attrs import MLFLOW_PARENT_ATTR, read
from optuna_trainer.study.claims import ClaimLock, file_lock, held
from optuna_trainer.study.storage import mask_url, sqlite_creation_lock

logger = logging.getLogger(__name__)

# Beside the study's run folders: the lock under which one worker creates the study's parent run.
MLFLOW_PARENT_LOCK = "mlflow_parent.lock"
_MLFLOW_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}


def _report_to(trainer: Trainer) -> list[str]:
    report_to = trainer.args.report_to
    if report_to is None or report_to == "none":
        return []
    return [report_to] if isinstance(report_to, str) else list(report_to)


class _TrialRunId(TrainerCallback):
    """Reads the MLflow run that transformers' callback started for this trial (it runs after that callback)."""

    def __init__(self, trackers: TrialTrackers, number: int) -> None:
        self.trackers = trackers
        self.number = number

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not self.trackers.mlflow:
            return
        import mlflow

        run = mlflow.active_run()
        if run is not None and run.info.run_id != self.trackers.parent_run_id:
            self.trackers.mlflow_runs[self.number] = run.info.run_id
            mlflow.set_tag("mlflow.runName", f"trial-{self.number}")


class TrialTrackers:
    """Starts, groups and closes one tracker run per trial; `__call__` is the Optuna study callback."""

    def __init__(
        self,
        trainer: Trainer,
        study: optuna.Study | None,
        study_name: str,
        is_main: bool,
        lock: ClaimLock | None = None,
    ) -> None:
        """`lock`: the study's claim lock (study/claims.py), which every worker of the study shares, across machines
        too; without it a file lock under `output_dir` serializes the workers of one machine."""
        wanted = _report_to(trainer)
        self.trainer = trainer
        self.study = study
        self.study_name = study_name
        self.lock = lock
        self.output_dir = str(trainer.args.output_dir)
        self.is_main = is_main and trainer.is_world_process_zero()
        # Named: as transformers, which fails where the package is missing; "all": the installed ones.
        self.mlflow = "mlflow" in wanted or ("all" in wanted and _available("mlflow"))
        self.wandb = "wandb" in wanted or ("all" in wanted and _available("wandb"))
        self.parent_run_id: str | None = None
        self.mlflow_runs: dict[int, str] = {}
        self._env: dict[str, str | None] = {}
        self._per_trial: list[TrainerCallback] = []
        self._retired: list[TrainerCallback] = []

    @property
    def active(self) -> bool:
        return self.mlflow or self.wandb

    def _set_env(self, name: str, value: str) -> None:
        self._env.setdefault(name, os.environ.get(name))
        os.environ[name] = value

    # ---- the search --------------------------------------------------------------------------------------------

    def start(self) -> None:
        if not self.mlflow:
            return
        self._set_env("MLFLOW_NESTED_RUN", "true")
        if not self.is_main:
            return
        import mlflow

        tracking = os.environ.get("MLFLOW_TRACKING_URI")
        if tracking:
            mlflow.set_tracking_uri(tracking)
        uri = mlflow.get_tracking_uri()
        try:
            with sqlite_creation_lock(uri, "report_to", "the MLflow store "):
                # The store's first open creates its tables (SQLite): one worker at a time.
                mlflow.MlflowClient(uri).search_experiments(max_results=1)
            with self._parent_lock():
                if os.environ.get("MLFLOW_EXPERIMENT_NAME"):
                    mlflow.set_experiment(os.environ["MLFLOW_EXPERIMENT_NAME"])  # created by the first worker
                self.parent_run_id = self._start_parent(mlflow)
        except (filelock.Timeout, ValueError):
            raise
        except Exception as err:  # noqa: BLE001 - any client or server error: one clear line, password masked
            first_line = mask_url(str(err)).strip().splitlines()[0] if str(err).strip() else ""
            raise RuntimeError(
                f"report_to: MLflow at {mask_url(uri)!r} failed at the start of the search "
                f"({type(err).__name__}: {first_line}); check MLFLOW_TRACKING_URI and that its server answers, or "
                "leave mlflow out of report_to"
            ) from None

    def _parent_lock(self) -> contextlib.AbstractContextManager[None]:
        """Held from reading the study's parent run id to storing a new one: N workers, one parent run."""
        if self.lock is not None:
            return held(self.lock)
        os.makedirs(self.output_dir, exist_ok=True)
        return held(file_lock(os.path.join(self.output_dir, MLFLOW_PARENT_LOCK)))

    def _start_parent(self, mlflow: Any) -> str:
        """Reopen the study's parent run (the study continues, or another worker created it), else create it."""
        # Read under the lock: the attribute another worker stored a moment ago counts.
        previous = self.study.user_attrs.get(MLFLOW_PARENT_ATTR) if self.study is not None else None
        run = None
        if previous:
            try:
                run = mlflow.start_run(run_id=previous)
            except Exception as err:  # noqa: BLE001 - deleted, or another tracking store: start a new parent run
                logger.info(
                    f"MLflow: the study's parent run {previous} cannot be reopened ({type(err).__name__}); "
                    "starting a new one"
                )
                run = None
        if run is None:
            run = mlflow.start_run(run_name=self.study_name, tags={"optuna.study_name": self.study_name})
            if self.study is not None:
                self.study.set_user_attr(MLFLOW_PARENT_ATTR, run.info.run_id)
        return str(run.info.run_id)

    def end(self, interrupted: bool = False) -> None:
        if self.mlflow and self.is_main and self.parent_run_id is not None:
            import mlflow

            while mlflow.active_run() is not None:
                mlflow.end_run(status="KILLED" if interrupted else "FINISHED")
        if self.wandb and self.is_main:
            import wandb

            if wandb.run is not None:
                wandb.finish(exit_code=1 if interrupted else 0)
        self._retired.clear()  # no run is active any more: their __del__ has nothing to end
        for name, value in self._env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._env.clear()

    # ---- each trial --------------------------------------------------------------------------------------------

    def before_trial(self, number: int) -> None:
        """Fresh transformers tracker callbacks for this trial: a nested MLflow run, a W&B run in the study's group."""
        if self.wandb:
            from transformers.integrations import WandbCallback

            self.trainer.pop_callback(WandbCallback)
            self.trainer.add_callback(_trial_wandb_callback(number, self.study_name))
        if self.mlflow:
            from transformers.integrations import MLflowCallback

            # The callback of the trial before stays referenced until the search ends: its __del__ ends whatever
            # run is active, which would be the study's parent run.
            old = self.trainer.pop_callback(MLflowCallback)
            if old is not None:
                self._retired.append(old)
            self.trainer.add_callback(MLflowCallback())
            callback = _TrialRunId(self, number)
            self.trainer.add_callback(callback)
            self._per_trial.append(callback)

    def after_trial(self) -> None:
        for callback in self._per_trial:
            self.trainer.remove_callback(callback)
        self._per_trial.clear()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna's study callback: the told trial's state, value and intermediate values, then its run closes."""
        if not self.is_main:
            return
        try:
            if self.mlflow:
                self._close_mlflow(trial)
            if self.wandb:
                self._close_wandb(trial)
        except Exception as err:  # noqa: BLE001 - a tracker failure must not end the search
            logger.warning(f"Trial {trial.number}: could not log to the tracker ({type(err).__name__}: {err})")

    def _close_mlflow(self, trial: FrozenTrial) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        run_id = self.mlflow_runs.pop(trial.number, None)
        if run_id is None:  # failed before training began: a run of its own all the same
            experiment = client.get_run(self.parent_run_id).info.experiment_id if self.parent_run_id else "0"
            tags = {"mlflow.runName": f"trial-{trial.number}"}
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            run_id = client.create_run(experiment, tags=tags).info.run_id
        # transformers' callback ends the run at the end of training; a trial stopped by an error may leave it on.
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run()
        client.set_tag(run_id, "optuna.study_name", self.study_name)
        client.set_tag(run_id, "optuna.trial_number", str(trial.number))
        client.set_tag(run_id, "optuna.state", trial.state.name)
        for name, value in trial.params.items():
            client.set_tag(run_id, f"optuna.param.{name}", str(value))
        if trial.value is not None:
            client.log_metric(run_id, "optuna.value", float(trial.value))
        for step, value in sorted(trial.intermediate_values.items()):
            client.log_metric(run_id, "optuna.intermediate", float(value), step=int(step))
        attrs = read(trial)
        reason = attrs.get("fail_reason") or attrs.get("stopped_reason")
        if reason:
            client.set_tag(run_id, "optuna.reason", str(reason)[:5000])
        client.set_terminated(run_id, status=_MLFLOW_STATUS.get(trial.state, "FAILED"))

    def _close_wandb(self, trial: FrozenTrial) -> None:
        import wandb

        run = wandb.run
        if run is None or run.name != f"trial-{trial.number}":
            # Failed before training began (or the user's own run is active): a run of its own all the same.
            if run is not None:
                wandb.finish()
            run = wandb.init(
                project=os.getenv("WANDB_PROJECT", "huggingface"),
                name=f"trial-{trial.number}",
                group=self.study_name,
            )
        for step, value in sorted(trial.intermediate_values.items()):
            run.log({"optuna/intermediate": value, "optuna/step": step})
        run.summary.update(
            {
                "optuna/study_name": self.study_name,
                "optuna/trial_number": trial.number,
                "optuna/state": trial.state.name,
                "optuna/value": trial.value,
                **{f"optuna/param/{k}": v for k, v in trial.params.items()},
            }
        )
        wandb.finish(exit_code=1 if trial.state == TrialState.FAIL else 0)


def _trial_wandb_callback(number: int, study_name: str) -> TrainerCallback:
    """transformers' `WandbCallback` with the run of one trial: named `trial-<number>`, in the study's group.

    In a search its `on_train_begin` finishes the previous run and starts one grouped by the trial's output
    directory; here the trial's run is started first, named and grouped, and `setup` (which reuses an active run)
    logs the arguments and the model config into it."""
    from transformers.integrations import WandbCallback

    class TrialWandbCallback(WandbCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                import wandb

                if wandb.run is not None:
                    wandb.finish()
                wandb.init(project=os.getenv("WANDB_PROJECT", "huggingface"), name=f"trial-{number}", group=study_name)
            self.setup(args, state, model, **kwargs)

    return TrialWandbCallback()


def _available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


__all__ = ["TrialTrackers"]
