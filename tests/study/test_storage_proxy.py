"""`storage="grpc://host:port"` through `optuna-trainer storage-proxy` (Optuna's gRPC storage proxy) in front of
PostgreSQL: a real search runs through it, and what it refuses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import optuna
import pytest

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from optuna_trainer.study.storage import GRPC_NOTE, open_storage, validate_storage
from tests.support import (
    QUIET_ENV,
    REPO,
    base_args,
    capture_logs,
    compute_metrics,
    free_port,
    kill_process_tree,
    make_dataset,
    require_service,
    service_answers,
    tiny_model,
)

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.mark.parametrize("url", ["grpc://", "grpc://host", "grpc://host:port", "grpc://host:99999", "grpc://h:1/db"])
def test_a_malformed_address_is_refused(url):
    with pytest.raises(ValueError, match=r"storage: .* is not a gRPC proxy address; write it as grpc://host:port"):
        validate_storage(url)


def test_no_proxy_listening_is_said_before_training():
    port = free_port()
    with pytest.raises(ValueError, match=rf"no storage proxy answers at 127.0.0.1:{port} within .* storage-proxy"):
        open_storage(f"grpc://127.0.0.1:{port}", ".")


@pytest.mark.services
@pytest.mark.processes
def test_a_search_through_the_proxy(tmp_path):
    require_service("PostgreSQL", "127.0.0.1", 5432)
    port = free_port()
    # The test server trusts local connections, so a password is accepted and ignored: it must not be logged.
    with_password = PG.replace("postgres@", "postgres:s3cret-pw@")
    log = open(tmp_path / "proxy.log", "wb")  # noqa: SIM115 - closed in finally, after the proxy is gone
    proxy = subprocess.Popen(
        [sys.executable, "-m", "optuna_trainer.cli", "storage-proxy", "--storage", with_password, "--port", str(port)],
        cwd=REPO,
        env={**os.environ, **QUIET_ENV},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    study_name = f"t-proxy-{uuid.uuid4().hex[:10]}"
    try:
        deadline = time.monotonic() + 60
        while not service_answers("127.0.0.1", port, timeout=0.5):
            assert proxy.poll() is None and time.monotonic() < deadline, "the proxy did not start"
            time.sleep(0.2)
        args = OptunaTrainingArguments(
            **base_args(
                tmp_path / "out",
                storage=f"grpc://127.0.0.1:{port}",
                study_name=study_name,
                n_trials=3,
                search_report=False,
                hp_space={"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
            )
        )
        trainer = OptunaTrainer(
            model_init=tiny_model,
            args=args,
            train_dataset=make_dataset(),
            eval_dataset=make_dataset(32, seed=1),
            compute_metrics=compute_metrics,
        )
        with capture_logs() as logs:
            best = trainer.hyperparameter_search()
        assert f"gRPC storage proxy 127.0.0.1:{port}" in logs.text and GRPC_NOTE in logs.text
        # What the workers wrote through the proxy is in PostgreSQL, read directly.
        study = optuna.load_study(study_name=study_name, storage=open_storage(PG, ".").storage)
        assert [t.state.name for t in study.trials if t.state.is_finished()].count("COMPLETE") + len(
            [t for t in study.trials if t.state.name == "PRUNED"]
        ) == 3
        assert study.best_trial.number == int(best.run_id) and study.best_value == best.objective
        assert len(study.trials[0].intermediate_values) == 4  # every evaluation reported through the proxy
        served = (tmp_path / "proxy.log").read_text()
        assert f"on 0.0.0.0:{port}" in served and "postgres:***@127.0.0.1" in served and "s3cret-pw" not in served
    finally:
        kill_process_tree(proxy)
        log.close()
        try:
            optuna.delete_study(study_name=study_name, storage=open_storage(PG, ".").storage)
        except KeyError:
            pass


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("grpc://127.0.0.1:13000", "the proxy serves a database URL, not another proxy"),
        ("memory", "an in-memory storage cannot be served"),
        ("nosuch://host/db", "storage: unknown scheme 'nosuch'"),
    ],
)
def test_the_proxy_command_refuses_what_it_cannot_serve(url, message):
    from optuna_trainer.cli import main

    with pytest.raises(SystemExit, match=message):
        main(["storage-proxy", "--storage", url, "--port", "1"])


def test_the_proxy_command_refuses_no_threads():
    from optuna_trainer.cli import main

    with pytest.raises(SystemExit, match="threads: expected a positive number of threads, got 0"):
        main(["storage-proxy", "--storage", PG, "--port", "1", "--threads", "0"])
