"""A trial killed on one machine resumes on another from the checkpoint in the artifact store (search/resume.py,
training/checkpoint_upload.py), with a directory store and with an S3 server (moto's, started by the test).

Two machines that share nothing but the PostgreSQL study and the store: each worker has its own output_dir, TMPDIR
and working files; machine A's folder is deleted after its worker is SIGKILLed (the machine is gone), so nothing of it
can be read from the local disk.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import ExitStack

import optuna
import pytest
from optuna.trial import TrialState

from optuna_trainer.study.attrs import BEST_MODEL_ARTIFACT_ATTR
from optuna_trainer.study.storage import open_storage
from tests.support import (
    kill_process_tree,
    require_service,
    s3_server,
    start_worker,
    wait_all,
    wait_for_file,
)

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
HP = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


def _store_objects(kind: str, store: str, env: dict[str, str]) -> list[str]:
    if kind == "directory":
        return sorted(os.listdir(store))
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    return sorted(o["Key"].rsplit("/", 1)[-1] for o in client.list_objects_v2(Bucket="shared").get("Contents", []))


@pytest.mark.processes
@pytest.mark.services
@pytest.mark.parametrize("kind", ["directory", "s3"])
def test_killed_trial_resumes_on_another_machine_from_the_store(kind, tmp_path):
    require_service("PostgreSQL", "127.0.0.1", 5432)
    study_name = f"t-elsewhere-{uuid.uuid4().hex[:10]}"
    machine_a, machine_b = tmp_path / "machine-a", tmp_path / "machine-b"
    for machine in (machine_a, machine_b):
        (machine / "tmp").mkdir(parents=True)
    with ExitStack() as stack:
        env: dict[str, str] = {}
        if kind == "s3":
            import boto3

            env = stack.enter_context(s3_server())
            boto3.client(
                "s3",
                endpoint_url=env["AWS_ENDPOINT_URL"],
                aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                region_name=env["AWS_DEFAULT_REGION"],
            ).create_bucket(Bucket="shared")
            store = "s3://shared/searches"
        else:
            store = str(tmp_path / "shared-store")
        try:
            _kill_on_a_resume_on_b(kind, store, env, study_name, machine_a, machine_b, tmp_path)
        finally:
            optuna.delete_study(study_name=study_name, storage=open_storage(PG, ".").storage)


def _kill_on_a_resume_on_b(kind, store, env, study_name, machine_a, machine_b, tmp_path) -> None:
    marker, record = tmp_path / "paused", tmp_path / "steps.jsonl"

    def spec(machine):
        return {
            "output_dir": str(machine / "out"),
            "storage": PG,
            "study_name": study_name,
            "n_trials": 3,
            "heartbeat_interval": 1,  # stale after 2 s without a heartbeat
            "pruner": "none",
            "sampler": {"name": "random", "seed": 0},
            "save_strategy": "steps",
            "save_steps": 2,
            "artifact_store": store,
            "search_report": False,
            "hp_space": HP,
            # Trial 1 pauses at its save of step 6, before that checkpoint is uploaded: the store holds step 4's.
            "_test": {"record": str(record), "marker": str(marker), "pause_run": "run-1", "pause_step": 6},
        }

    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    worker_a = start_worker(spec(machine_a), a_log, extra_env={**env, "TMPDIR": str(machine_a / "tmp")})
    wait_for_file(marker, worker_a, a_log, timeout=150)
    kill_process_tree(worker_a)  # SIGKILL: trial 1 stays RUNNING
    storage = open_storage(PG, ".", heartbeat_interval=None).storage
    study = optuna.load_study(study_name=study_name, storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    uploaded = study.trials[1].user_attrs["checkpoint_artifact"]
    assert uploaded["step"] == 4  # step 6 was saved on A's disk, never uploaded
    # The store: trial 1's newest checkpoint (step 2's was removed when step 4's arrived) and trial 0's best model.
    best_before = study.user_attrs[BEST_MODEL_ARTIFACT_ATTR]
    assert _store_objects(kind, store, env) == sorted([uploaded["artifact_id"], best_before["artifact_id"]])
    assert (machine_a / "out" / "run-1" / "checkpoint-6").is_dir()
    a_values = dict(study.trials[1].intermediate_values)
    shutil.rmtree(machine_a)  # machine A is gone, with everything on its disk

    worker_b = start_worker(spec(machine_b), b_log, extra_env={**env, "TMPDIR": str(machine_b / "tmp")})
    (result,) = wait_all([(worker_b, b_log)], timeout=200)

    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.trials
    assert [t.state for t in trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.COMPLETE,
        TrialState.COMPLETE,
    ]
    assert result == {"ran": 2, "finished": 3}  # the budget is exact: the retry and one new trial
    retry = trials[2]
    assert retry.system_attrs["failed_trial"] == 1 and retry.params == trials[1].params
    run_dir = machine_b / "out" / "run-2"
    assert retry.user_attrs["run_dir"] == str(run_dir)
    assert retry.user_attrs["resumed_from_checkpoint"] == str(run_dir / "checkpoint-4")
    assert retry.user_attrs["steps"] == 8
    # B trained from step 5: the downloaded checkpoint (weights, optimizer, trainer state) was loaded.
    runs = [json.loads(line) for line in record.read_text().splitlines()]
    on_b = [(os.path.basename(r["run_dir"]), r["first_step"]) for r in runs if r["pid"] == worker_b.pid]
    assert on_b == [("run-2", 5), ("run-3", 1)]
    # The evaluations A reported up to the checkpoint carried over (batch 8, eval every 2 steps: 16 samples each).
    assert sorted(retry.intermediate_values) == [16, 32, 48, 64]
    assert {s: retry.intermediate_values[s] for s in (16, 32)} == {s: a_values[s] for s in (16, 32)}
    # The store ends with the best model only: every trial's checkpoint left it when the trial ended.
    best = study.user_attrs[BEST_MODEL_ARTIFACT_ATTR]
    assert best["number"] == study.best_trial.number and best["value"] == study.best_value
    assert _store_objects(kind, store, env) == [best["artifact_id"]]
