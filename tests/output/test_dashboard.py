"""The dashboard the log points to works: optuna-dashboard, started with the command the search logs, serves the
study, its trials and their states over its HTTP API (a subprocess under a hard time bound)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from tests.support import (
    base_args,
    capture_logs,
    compute_metrics,
    kill_process_tree,
    make_dataset,
    tiny_model,
)

BOUND_S = 90


def _dashboard_available() -> None:
    if shutil.which("optuna-dashboard") is None and not _importable("optuna_dashboard"):
        reason = 'optuna-dashboard is not installed (pip install "optuna-trainer[dashboard]")'
        if os.environ.get("OPTUNA_TRAINER_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason}, and OPTUNA_TRAINER_REQUIRE_SERVICES=1 requires it")
        pytest.skip(reason)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - a local test server
        return json.loads(response.read())


@pytest.mark.processes
def test_the_logged_dashboard_command_serves_the_study(out_dir):
    _dashboard_available()
    args = OptunaTrainingArguments(
        **base_args(
            out_dir,
            storage=None,
            n_trials=4,
            pruner={"name": "median", "n_startup_trials": 1},
            hp_space={"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}},
        )
    )
    trainer = OptunaTrainer(
        model_init=tiny_model,
        args=args,
        train_dataset=make_dataset(32),
        eval_dataset=make_dataset(16, seed=1),
        compute_metrics=compute_metrics,
    )
    with capture_logs() as logs:
        trainer.hyperparameter_search()
    (line,) = [m for m in logs.messages if "optuna-dashboard " in m]
    command = shlex.split(line[line.index("optuna-dashboard ") :])
    assert command[1].startswith("sqlite:///") and command[1].endswith("optuna_study.db")

    port = _free_port()
    # The script beside this interpreter first: a venv's bin/ is on PATH only when the venv is activated, and
    # optuna-dashboard 0.21 has no __main__ for `python -m`.
    executable = shutil.which("optuna-dashboard", path=os.path.dirname(sys.executable)) or shutil.which(
        "optuna-dashboard"
    )
    argv = [executable] if executable else [sys.executable, "-m", "optuna_dashboard"]
    proc = subprocess.Popen(
        [*argv, *command[1:], "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + BOUND_S
        studies = None
        while studies is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                pytest.fail(
                    f"optuna-dashboard did not answer within {BOUND_S} s (exit {proc.poll()}):\n{output[-3000:]}"
                )
            try:
                studies = _get(f"{base}/api/studies")["study_summaries"]
            except OSError:
                time.sleep(0.5)
        (summary,) = [s for s in studies if s["study_name"] == trainer.study.study_name]
        detail = _get(f"{base}/api/studies/{summary['study_id']}")
        served = sorted((t["number"], t["state"].upper()) for t in detail["trials"])
        assert served == sorted((t.number, t.state.name) for t in trainer.study.trials)
        assert len(served) == 4 and {"COMPLETE"} <= {state for _, state in served}
    finally:
        kill_process_tree(proc)
