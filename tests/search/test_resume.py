"""Running the same command again continues the study: after a normal finish, after SIGKILL mid-trial, after Ctrl-C."""

from __future__ import annotations

import json
import os
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState
from transformers import TrainerCallback

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from optuna_trainer.study.storage import open_storage
from tests.support import (
    base_args,
    capture_logs,
    compute_metrics,
    kill_process_tree,
    make_dataset,
    require_service,
    start_worker,
    tiny_model,
    wait_all,
    wait_for_file,
)

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
HP = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


def _trainer(out_dir, callbacks=(), **overrides) -> OptunaTrainer:
    values = {"storage": None, "n_trials": 2, "pruner": "none", "sampler": {"name": "random", "seed": 0}}
    values.update(overrides)
    args = OptunaTrainingArguments(**base_args(out_dir, **values))
    return OptunaTrainer(
        model_init=tiny_model,
        args=args,
        train_dataset=make_dataset(),
        eval_dataset=make_dataset(32, seed=1),
        compute_metrics=compute_metrics,
        callbacks=list(callbacks),
    )


def _states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.trials]


class TestResumeAfterFinish:
    def test_same_command_runs_nothing_more_and_n_trials_is_the_total(self, out_dir):
        first = _trainer(out_dir)
        best = first.hyperparameter_search(hp_space=HP)
        assert (out_dir / "optuna_study.db").is_file()  # the embedded default under output_dir
        assert _states(first.study) == ["COMPLETE", "COMPLETE"]
        saved = json.loads((out_dir / "best_model" / "trial.json").read_text())

        again = _trainer(out_dir)  # same command: same default storage and study name
        with capture_logs() as logs:
            best_again = again.hyperparameter_search(hp_space=HP)
        assert again.study.study_name == out_dir.name
        assert _states(again.study) == ["COMPLETE", "COMPLETE"]
        assert "already has 2 finished trials of n_trials=2; no trial to run" in logs.text
        assert (best_again.run_id, best_again.objective) == (best.run_id, best.objective)
        assert json.loads((out_dir / "best_model" / "trial.json").read_text()) == saved

        more = _trainer(out_dir, n_trials=3)  # a larger total runs only the difference
        best_more = more.hyperparameter_search(hp_space=HP)
        assert _states(more.study) == ["COMPLETE"] * 3
        assert best_more.run_id == str(more.study.best_trial.number)  # the best over old and new trials
        assert best_more.objective == max(t.value for t in more.study.trials)


class _Interrupt(TrainerCallback):
    """Ctrl-C in the middle of the second trial: KeyboardInterrupt is what SIGINT raises in the main thread."""

    def on_step_end(self, args, state, control, **kwargs):
        if os.path.basename(args.output_dir) == "run-1" and state.global_step == 3:
            raise KeyboardInterrupt


class TestCtrlC:
    def test_marks_the_running_trial_failed_and_the_next_run_completes_the_budget(self, out_dir):
        trainer = _trainer(out_dir, callbacks=[_Interrupt()], n_trials=3, save_strategy="steps", save_steps=2)
        with capture_logs() as logs, pytest.raises(KeyboardInterrupt):
            trainer.hyperparameter_search(hp_space=HP)
        study = trainer.study
        assert _states(study) == ["COMPLETE", "FAIL", "WAITING"]  # nothing left RUNNING; trial 1 queued again
        assert study.trials[1].user_attrs["fail_reason"].startswith("KeyboardInterrupt")
        assert "Interrupted: the running trial is marked FAIL" in logs.text
        # The trainer is usable again: its model and arguments were restored.
        assert trainer.args.output_dir == str(out_dir) and trainer.model is not None

        again = _trainer(out_dir, n_trials=3, save_strategy="steps", save_steps=2)
        again.hyperparameter_search(hp_space=HP)
        assert _states(again.study) == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
        # The interrupted trial was queued again: the next run continued it, with its parameters.
        retry = again.study.trials[2]
        assert retry.system_attrs["failed_trial"] == 1 and retry.params == again.study.trials[1].params


@pytest.mark.processes
@pytest.mark.parametrize("kind", ["sqlite default", pytest.param("postgresql", marks=pytest.mark.services)])
class TestResumeAfterSigkill:
    def test_stale_trial_is_retried_with_its_params_from_its_checkpoint(self, kind, tmp_path):
        out_dir = tmp_path / "crash"
        marker, record = tmp_path / "paused", tmp_path / "steps.jsonl"
        if kind == "postgresql":
            require_service("PostgreSQL", "127.0.0.1", 5432)
            storage, study_name = PG, f"t-crash-{uuid.uuid4().hex[:10]}"
        else:
            storage, study_name = f"sqlite:///{out_dir / 'optuna_study.db'}", "crash"
        spec = {
            "output_dir": str(out_dir),
            "storage": PG if kind == "postgresql" else None,  # None: the embedded SQLite default
            "study_name": study_name,
            "n_trials": 3,
            "heartbeat_interval": 1,  # stale after 2 s without a heartbeat
            "pruner": "none",
            "sampler": {"name": "random", "seed": 0},
            "save_strategy": "steps",
            "save_steps": 2,
            "hp_space": HP,
            "_test": {"record": str(record), "marker": str(marker), "pause_run": "run-1", "pause_step": 4},
        }
        try:
            self._crash_and_resume(spec, storage, study_name, tmp_path, kind)
        finally:
            if kind == "postgresql":
                optuna.delete_study(study_name=study_name, storage=open_storage(PG, ".").storage)

    def _crash_and_resume(self, spec, storage, study_name, tmp_path, kind) -> None:
        out_dir, marker, record = tmp_path / "crash", tmp_path / "paused", tmp_path / "steps.jsonl"
        started = time.monotonic()
        proc = start_worker(spec, tmp_path / "first.log")
        wait_for_file(marker, proc, tmp_path / "first.log", timeout=120)
        kill_process_tree(
            proc
        )  # SIGKILL: no finally, no tell; trial 1 stays RUNNING with checkpoint-2 and checkpoint-4
        proc.wait(timeout=30)
        assert (out_dir / "run-1" / "checkpoint-4").is_dir()
        storage = open_storage(storage, ".", heartbeat_interval=None).storage  # after the worker created it
        killed = optuna.load_study(study_name=study_name, storage=storage)
        assert [t.state for t in killed.trials] == [TrialState.COMPLETE, TrialState.RUNNING]

        second = start_worker(spec, tmp_path / "second.log")
        (result,) = wait_all([(second, tmp_path / "second.log")], timeout=150)
        elapsed = time.monotonic() - started

        study = optuna.load_study(study_name=study_name, storage=storage)
        trials = study.trials
        assert [t.state for t in trials] == [
            TrialState.COMPLETE,
            TrialState.FAIL,
            TrialState.COMPLETE,
            TrialState.COMPLETE,
        ]
        assert result == {"ran": 2, "finished": 3}  # the retry and one new trial: the total is n_trials
        retry = trials[2]
        assert retry.system_attrs["failed_trial"] == 1
        assert retry.params == trials[1].params  # the same parameters
        assert retry.user_attrs["run_dir"] == str(out_dir / "run-1")  # continued where the original trained
        assert retry.user_attrs["resumed_from_checkpoint"] == str(out_dir / "run-1" / "checkpoint-4")
        assert retry.user_attrs["steps"] == 8
        # It trained from step 5, not step 1: the checkpoint (weights, optimizer, trainer state) was loaded.
        runs = [json.loads(line) for line in record.read_text().splitlines()]
        second_run = [r for r in runs if r["pid"] == second.pid]
        assert [(os.path.basename(r["run_dir"]), r["first_step"]) for r in second_run] == [("run-1", 5), ("run-3", 1)]
        # The evaluations the original reported up to its checkpoint were carried over (eval every 2 steps).
        assert sorted(retry.intermediate_values) == [16, 32, 48, 64]  # samples seen, batch 8
        print(f"crash/resume test on {kind}: {elapsed:.1f} s, trials {[t.state.name for t in trials]}")


class TestResumePointWithAStore:
    """Which checkpoint a retried trial takes: this machine's or the artifact store's, the newer; a damaged artifact
    is not resumed from (the trial starts over, which costs time but hands back nothing unmeasured)."""

    @staticmethod
    def _retried(tmp_path, run_dir, local_steps, stored_step):
        from optuna_trainer.study.artifacts import open_artifact_store, upload_folder

        opened = open_artifact_store(str(tmp_path / "store"))
        study = optuna.create_study()
        trial = study.ask()
        for step in local_steps:
            folder = run_dir / f"checkpoint-{step}"
            folder.mkdir(parents=True)
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        source = tmp_path / "uploaded" / f"checkpoint-{stored_step}"
        source.mkdir(parents=True)
        (source / "trainer_state.json").write_text(json.dumps({"global_step": stored_step, "from": "store"}))
        record = upload_folder(opened, str(source), trial)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("checkpoint_artifact", {**record, "step": stored_step})
        study.tell(trial, state=TrialState.FAIL)
        optuna.storages.RetryHeartbeatStaleTrialCallback()(study, study.trials[0])
        return study, opened, record

    def test_the_store_when_this_machine_lacks_the_run(self, tmp_path):
        from optuna_trainer.search.resume import find_resume_point

        study, opened, _ = self._retried(tmp_path, tmp_path / "gone" / "run-0", [], 4)
        here = tmp_path / "here" / "run-1"
        point = find_resume_point(study, 1, opened, local_run_dir=str(here))
        assert (point.checkpoint, point.run_dir, point.step) == (str(here / "checkpoint-4"), str(here), 4)
        assert json.loads((here / "checkpoint-4" / "trainer_state.json").read_text())["from"] == "store"

    def test_a_newer_local_checkpoint_wins(self, tmp_path):
        from optuna_trainer.search.resume import find_resume_point

        run_dir = tmp_path / "run-0"
        study, opened, _ = self._retried(tmp_path, run_dir, [2, 6], 4)
        point = find_resume_point(study, 1, opened, local_run_dir=str(tmp_path / "run-1"))
        assert (point.checkpoint, point.run_dir) == (str(run_dir / "checkpoint-6"), str(run_dir))
        assert not (tmp_path / "run-1").exists()  # nothing downloaded

    def test_a_newer_stored_checkpoint_wins(self, tmp_path):
        from optuna_trainer.search.resume import find_resume_point

        run_dir = tmp_path / "run-0"
        study, opened, _ = self._retried(tmp_path, run_dir, [2], 4)
        point = find_resume_point(study, 1, opened, local_run_dir=str(run_dir))
        assert point.checkpoint == str(run_dir / "checkpoint-4") and point.step == 4

    def test_a_damaged_artifact_means_step_0(self, tmp_path):
        from optuna_trainer.search.resume import find_resume_point

        study, opened, record = self._retried(tmp_path, tmp_path / "gone" / "run-0", [], 4)
        (tmp_path / "store" / record["artifact_id"]).write_bytes(b"truncated")
        with capture_logs() as logs:
            point = find_resume_point(study, 1, opened, local_run_dir=str(tmp_path / "run-1"))
        assert point.checkpoint is None and point.step == 0
        assert "could not take its checkpoint (step 4)" in logs.text and "is not the one recorded" in logs.text
        assert not (tmp_path / "run-1" / "checkpoint-4").exists()
