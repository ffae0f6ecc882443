"""Per-trial runs in MLflow (a local SQLite tracking store) and W&B (offline), grouped under the study."""

from __future__ import annotations

import glob
import os

import optuna
import pytest

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from tests.support import base_args, make_dataset, read_wandb_offline_run, tiny_model

LR_SPACE = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
REQUIRED = os.environ.get("OPTUNA_TRAINER_REQUIRE_SERVICES") == "1"


def need(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        if REQUIRED:
            pytest.fail(f"{module} is not installed (OPTUNA_TRAINER_REQUIRE_SERVICES=1): pip install -e '.[trackers]'")
        pytest.skip(f"{module} is not installed: pip install -e '.[trackers]'")


def three_trial_trainer(out_dir, report_to, storage="memory"):
    """Trial 0 completes (4 evaluations), trial 1 fails before training, trial 2 is pruned at its first evaluation."""
    trainer = None

    def metrics(pred):
        return {"accuracy": 0.9 if trainer.args.output_dir.endswith("run-0") else 0.1}

    def model_init(trial=None):
        if trainer is not None and trainer.args.output_dir.endswith("run-1"):
            raise RuntimeError("no model for trial 1")
        return tiny_model()

    trainer = OptunaTrainer(
        model_init=model_init,
        args=OptunaTrainingArguments(
            **base_args(
                out_dir,
                report_to=report_to,
                n_trials=2,
                hp_space=LR_SPACE,
                pruner={"name": "threshold", "lower": 0.5},
                storage=storage,
            )
        ),
        train_dataset=make_dataset(32),
        eval_dataset=make_dataset(16, 1),
        compute_metrics=metrics,
    )
    return trainer


@pytest.mark.slow
def test_mlflow_one_nested_run_per_trial_under_the_study(out_dir, tmp_path, monkeypatch):
    need("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    storage = f"sqlite:///{tmp_path}/study.db"
    trainer = three_trial_trainer(out_dir, ["mlflow"], storage)
    trainer.hyperparameter_search(n_trials=2, catch=(RuntimeError,))
    study = trainer.study
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "PRUNED"]

    client = MlflowClient()
    runs = client.search_runs(experiment_ids=["0"])
    (parent,) = [r for r in runs if r.info.run_name == study.study_name]
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    trials = {int(r.data.tags["optuna.trial_number"]): r for r in runs if r is not parent}
    assert sorted(trials) == [0, 1, 2]
    for number, run in trials.items():
        frozen = study.trials[number]
        assert run.info.run_name == f"trial-{number}"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["optuna.state"] == frozen.state.name
        assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[frozen.state.name]
        reported = client.get_metric_history(run.info.run_id, "optuna.intermediate")
        assert {m.step: m.value for m in reported} == frozen.intermediate_values
        # Each trial's own evaluations only: nothing logged into the run of the trial before (transformers #11944).
        evals = client.get_metric_history(run.info.run_id, "eval_accuracy")
        assert len(evals) == {0: 4, 1: 0, 2: 1}[number]
        if "learning_rate" in frozen.params:
            assert float(run.data.tags["optuna.param.learning_rate"]) == pytest.approx(frozen.params["learning_rate"])
    assert trials[0].data.metrics["optuna.value"] == study.trials[0].value == 0.9
    assert "no model for trial 1" in trials[1].data.tags["optuna.reason"]

    # The study continues: its trials join the same parent run.
    trainer = three_trial_trainer(out_dir, ["mlflow"], storage)
    trainer.hyperparameter_search(n_trials=3, catch=(RuntimeError,))
    runs = client.search_runs(experiment_ids=["0"])
    assert sum(r.info.run_name == study.study_name for r in runs) == 1
    assert len(runs) == 1 + len(trainer.study.trials)


def test_wandb_offline_one_run_per_trial_in_the_studys_group(out_dir, tmp_path, monkeypatch):
    need("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    trainer = three_trial_trainer(out_dir, ["wandb"])
    trainer.hyperparameter_search(n_trials=2, catch=(RuntimeError,))
    study = trainer.study
    runs = [read_wandb_offline_run(f) for f in glob.glob(f"{tmp_path}/wandb/offline-run-*/run-*.wandb")]
    by_number = {run["summary"]["optuna/trial_number"]: run for run in runs}
    assert len(runs) == 3 and sorted(by_number) == [0, 1, 2]
    for number, run in by_number.items():
        frozen = study.trials[number]
        assert run["name"] == f"trial-{number}" and run["group"] == study.study_name
        assert run["summary"]["optuna/state"] == frozen.state.name
        assert run["exit_code"] == (1 if frozen.state == optuna.trial.TrialState.FAIL else 0)
        reported = {row["optuna/step"]: row["optuna/intermediate"] for row in run["history"] if "optuna/step" in row}
        assert reported == frozen.intermediate_values
        evals = [row for row in run["history"] if "eval/accuracy" in row]
        assert len(evals) == {0: 4, 1: 0, 2: 1}[number]  # no trial's evaluations in another trial's run
    assert by_number[0]["summary"]["optuna/value"] == 0.9


def _launch_workers(n_workers: int, spec: dict, log):
    """`optuna-trainer workers N -- python -m tests.support_worker <spec>`, bounded: past it, killed and failed."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from tests.support import kill_process_tree

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "tests.support_worker", json.dumps(spec)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "optuna_trainer.cli", "workers", str(n_workers), "--no-progress", "--", *command],
        cwd=repo,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        return proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        kill_process_tree(proc)
        pytest.fail(f"the launcher ran past 300 s; its output:\n{log.read_text()[-4000:]}")


@pytest.mark.processes
def test_mlflow_with_several_workers_one_parent_run_and_a_fresh_sqlite_store(tmp_path, monkeypatch):
    """N workers starting together on a new SQLite tracking store: none dies, and the study has one parent run."""
    need("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"  # does not exist yet: the workers create it together
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "out"
    choices = [1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3]
    spec = {
        "output_dir": str(out),
        "storage": None,
        "hp_space": {"learning_rate": {"type": "categorical", "choices": choices}},
        "sampler": "grid",
        "n_trials": len(choices),
        "report_to": ["mlflow"],
    }
    log = tmp_path / "launcher.log"
    assert _launch_workers(3, spec, log) == 0, log.read_text()[-4000:]
    text = log.read_text()
    assert "died" not in text and "started again" not in text and "OperationalError" not in text, text[-4000:]
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "optuna_journal.log"))
    )
    study = optuna.load_study(study_name=out.name, storage=storage)
    assert len({t.user_attrs["worker"] for t in study.trials}) > 1  # the trials ran on several workers
    runs = MlflowClient(uri).search_runs(experiment_ids=["0"])
    parents = [r for r in runs if r.info.run_name == study.study_name]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    (parent,) = parents
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    trials = [r for r in runs if r is not parent]
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in trials) == list(range(len(choices)))
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trials)


@pytest.mark.processes
def test_a_password_in_the_mlflow_tracking_uri_is_never_printed(tmp_path, monkeypatch):
    need("mlflow")
    import socket

    from tests.support import start_worker

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cr3t-pw@127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    spec = {"output_dir": str(tmp_path / "out"), "storage": "memory", "n_trials": 1, "report_to": ["mlflow"]}
    log = tmp_path / "worker.log"
    proc = start_worker(spec, log)
    try:
        code = proc.wait(timeout=240)
    except Exception:
        proc.kill()
        pytest.fail(f"the worker ran past 240 s:\n{log.read_text()[-4000:]}")
    text = log.read_text()
    assert code != 0
    assert "s3cr3t-pw" not in text, text[-4000:]
    lines = [line for line in text.splitlines() if "MLflow at " in line]
    assert lines and f"'http://alice:***@127.0.0.1:{port}'" in lines[-1], text[-4000:]


# One worker's start of the search's trackers, at the moment the file `go` appears (after it wrote `ready-<i>`).
STARTER = """
import os, sys, time, types
import optuna
from optuna_trainer.output.trackers import TrialTrackers
out, journal, i = sys.argv[1:4]
storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
study = optuna.load_study(study_name="s", storage=storage)
args = types.SimpleNamespace(report_to=["mlflow"], output_dir=out)
trackers = TrialTrackers(types.SimpleNamespace(args=args, is_world_process_zero=lambda: True), study, "s", True)
import mlflow  # imports and the store opened before the start: the workers reach the study at the same moment
mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).search_experiments()
open(os.path.join(out, f"ready-{i}"), "w").close()
while not os.path.exists(os.path.join(out, "go")):
    time.sleep(0.001)
trackers.start()
print("PARENT", trackers.parent_run_id, flush=True)
trackers.end()
"""


@pytest.mark.processes
def test_workers_starting_together_share_one_mlflow_parent_run(tmp_path, monkeypatch):
    """The parent run is created once under a lock: workers that read the study at the same moment all see it."""
    need("mlflow")
    import subprocess
    import sys
    import time
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(uri).search_experiments()  # the store exists: only the parent run is raced for
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    journal = tmp_path / "journal.log"
    optuna.create_study(
        study_name="s",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal))),
    )
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, str(out), str(journal), str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(3)
    ]
    try:
        deadline = time.monotonic() + 180
        while not all((out / f"ready-{i}").exists() for i in range(3)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a starter never got ready"
            time.sleep(0.05)
        (out / "go").touch()
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), outputs
    ids = {line.split()[1] for text in outputs for line in text.splitlines() if line.startswith("PARENT ")}
    runs = MlflowClient(uri).search_runs(experiment_ids=["0"])
    assert len(ids) == 1 and [r.info.run_id for r in runs] == list(ids), (ids, outputs)
