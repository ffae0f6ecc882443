"""Storage settings: what each kind opens, heartbeats, masked passwords, and clear errors before any training."""

from __future__ import annotations

import logging
import traceback
import uuid
from pathlib import Path

import optuna
import pytest

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from optuna_trainer.study.storage import mask_url, open_storage
from tests.support import (
    CountingModelInit,
    base_args,
    capture_logs,
    compute_metrics,
    make_dataset,
    require_service,
    tiny_model,
)

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SECRET = "s3cr3t-Pw-7f1c"  # trust authentication ignores it, so a real server accepts the URL
PG_WITH_PASSWORD = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:5432/test"
HP = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


def HP_CALLABLE(trial):  # noqa: N802 - a constant of the tests
    return {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2)}


def _trainer(out_dir, model_init=tiny_model, **overrides) -> OptunaTrainer:
    values = {"n_trials": 2, "pruner": "none", "sampler": {"name": "random", "seed": 0}}
    values.update(overrides)
    return OptunaTrainer(
        model_init=model_init,
        args=OptunaTrainingArguments(**base_args(out_dir, **values)),
        train_dataset=make_dataset(),
        eval_dataset=make_dataset(32, seed=1),
        compute_metrics=compute_metrics,
    )


class TestOpenStorage:
    def test_default_is_sqlite_under_output_dir_with_heartbeat(self, tmp_path):
        opened = open_storage(None, str(tmp_path / "out"))
        assert isinstance(opened.storage, optuna.storages.RDBStorage)
        assert opened.storage.url == f"sqlite:///{tmp_path / 'out' / 'optuna_study.db'}"
        assert opened.heartbeat_interval == 60 and opened.storage.grace_period == 120
        assert "heartbeat every 60 s" in opened.description

    def test_heartbeat_zero_turns_it_off_and_says_so(self, tmp_path):
        opened = open_storage(None, str(tmp_path), heartbeat_interval=0)
        assert opened.heartbeat_interval is None and opened.storage.get_heartbeat_interval() is None
        assert any("not retried" in n for n in opened.notes)

    @pytest.mark.parametrize("spec", ["memory", "journal"])
    def test_storages_without_heartbeat_say_so(self, spec, tmp_path):
        opened = open_storage(spec if spec == "memory" else str(tmp_path / "j.log"), str(tmp_path))
        assert opened.heartbeat_interval is None
        assert any("has no heartbeat" in n for n in opened.notes)

    def test_the_printed_settings_carry_the_no_heartbeat_note(self, out_dir):
        with capture_logs() as logs:
            _trainer(out_dir, storage=str(out_dir / "study.journal"), n_trials=1).hyperparameter_search(hp_space=HP)
        assert "note: a journal file has no heartbeat: a trial of a killed run stays RUNNING" in logs.text

    def test_heartbeat_interval_reaches_the_rdb_storage(self, out_dir):
        trainer = _trainer(out_dir, storage=None, heartbeat_interval=7, n_trials=1)
        trainer.hyperparameter_search(hp_space=HP)
        storage = trainer.study._storage
        storage = getattr(storage, "_backend", storage)  # create_study wraps an RDBStorage in a cache
        assert storage.get_heartbeat_interval() == 7 and storage.grace_period == 14
        assert isinstance(
            storage.get_heartbeat_stale_trial_callback(), optuna.storages.RetryHeartbeatStaleTrialCallback
        )


class TestHeartbeatArgument:
    @pytest.mark.parametrize("bad", [-1, 1.5, "60", True])
    def test_rejected_with_the_field_name(self, bad, tmp_path):
        with pytest.raises(ValueError, match=r"heartbeat_interval: must be a whole number of seconds"):
            OptunaTrainingArguments(output_dir=str(tmp_path), heartbeat_interval=bad)

    def test_cli(self, tmp_path):
        from transformers import HfArgumentParser

        (args,) = HfArgumentParser(OptunaTrainingArguments).parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path), "--heartbeat_interval", "5"]
        )
        assert args.heartbeat_interval == 5


@pytest.mark.services
class TestRedisJournal:
    def test_persisted_and_resumed(self, out_dir):
        require_service("Redis", "127.0.0.1", 6379)
        name = f"t-redis-{uuid.uuid4().hex[:10]}"
        try:
            first = _trainer(out_dir, storage="redis://127.0.0.1:6379/0", study_name=name)
            first.hyperparameter_search(hp_space=HP)
            again = _trainer(out_dir, storage="redis://127.0.0.1:6379/0", study_name=name)
            with capture_logs() as logs:
                again.hyperparameter_search(hp_space=HP)
            assert [t.state.name for t in again.study.trials] == ["COMPLETE", "COMPLETE"]
            assert "already has 2 finished trials" in logs.text
        finally:
            optuna.delete_study(study_name=name, storage=open_storage("redis://127.0.0.1:6379/0", ".").storage)


class TestMaskedPassword:
    @pytest.mark.services
    @pytest.mark.parametrize("storage", [PG_WITH_PASSWORD, f"{PG}?password={SECRET}"], ids=["userinfo", "query"])
    def test_password_never_written(self, tmp_path, capfd, storage):
        require_service("PostgreSQL", "127.0.0.1", 5432)
        out_dir = tmp_path / "secret-run"
        name = f"t-secret-{uuid.uuid4().hex[:10]}"
        # Every logger the run touches, at DEBUG (SQLAlchemy's engine and pool logs included), and stderr.
        names = ("optuna_trainer", "optuna", "transformers", "sqlalchemy", "")
        try:
            with capture_logs(*names, level=logging.DEBUG) as logs:
                trainer = _trainer(out_dir, storage=storage, study_name=name, save_strategy="steps", save_steps=4)
                trainer.hyperparameter_search(hp_space=HP)
                trainer.save_model(str(out_dir / "after-search"))  # the user's own save, with the user's args
            stored = str(optuna.load_study(study_name=name, storage=open_storage(PG, ".").storage).user_attrs)
            text = logs.text + capfd.readouterr().err + str(trainer.args) + trainer.args.to_json_string() + stored
        finally:
            optuna.delete_study(study_name=name, storage=open_storage(PG, ".").storage)
        assert trainer.args.storage == storage  # the user's object keeps its URL
        assert "***" in text and "127.0.0.1" in text  # the URL was printed, masked
        assert SECRET not in text
        files = [p for p in out_dir.rglob("*") if p.is_file()]
        assert any(p.name == "training_args.bin" for p in files)  # pickled arguments were written and checked
        leaked = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
        assert leaked == []

    def test_mask_url(self):
        assert mask_url(f"x {PG_WITH_PASSWORD} y") == "x postgresql+psycopg://postgres:***@127.0.0.1:5432/test y"
        assert mask_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
        assert mask_url(PG) == PG
        # an unencoded '@' in the password, and a password given as a query parameter
        assert mask_url("postgresql://u:p@ss@h:5432/db") == "postgresql://u:***@h:5432/db"
        assert mask_url("postgresql://u:p@ss@h/db?x=a@b") == "postgresql://u:***@h/db?x=a@b"
        assert mask_url(f"{PG}?sslmode=require&password=s3cret x") == f"{PG}?sslmode=require&password=*** x"
        assert mask_url(f"{PG}?PASSWORD=s3cret") == f"{PG}?PASSWORD=***"

    def test_an_unencoded_at_sign_is_refused_with_the_fix(self, tmp_path):
        with pytest.raises(ValueError, match=r"unencoded '@'.*%40") as info:
            OptunaTrainingArguments(output_dir=str(tmp_path), storage="postgresql+psycopg://u:s3cr@t@127.0.0.1/test")
        assert "s3cr" not in str(info.value)

    def test_pickled_arguments_hold_no_password_and_copies_keep_it(self, tmp_path):
        import copy
        import pickle

        for url in (PG_WITH_PASSWORD, f"{PG}?password={SECRET}"):
            args = OptunaTrainingArguments(output_dir=str(tmp_path), storage=url, hp_space=HP_CALLABLE)
            shown = pickle.dumps(args) + str(args).encode() + args.to_json_string().encode() + repr(args).encode()
            assert SECRET.encode() not in shown
            assert copy.deepcopy(args).storage == copy.copy(args).storage == url  # a copy is no file
            assert copy.deepcopy(args).hp_space is HP_CALLABLE


class TestClearErrorsBeforeTraining:
    @pytest.mark.parametrize(
        "url",
        [
            f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:1/test",  # nothing listens on port 1
            f"redis://:{SECRET}@127.0.0.1:1/0",
        ],
    )
    def test_unreachable_server(self, url, out_dir):
        model_init = CountingModelInit()
        trainer = _trainer(out_dir, model_init=model_init, storage=url)
        calls = model_init.built
        with pytest.raises(ValueError) as info:
            trainer.hyperparameter_search(hp_space=HP)
        message = str(info.value)
        assert message.startswith("storage: cannot open ") and "127.0.0.1:1" in message
        assert "Connection refused" in message or "connection" in message.lower()
        assert SECRET not in message and ":***@" in message
        assert SECRET not in "".join(traceback.format_exception(info.value))
        assert model_init.built == calls  # no trial's model was built
        assert not any(p.name.startswith("run-") for p in Path(out_dir).iterdir())

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            (f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:notaport/test", "malformed URL"),
            (f"postgresq://postgres:{SECRET}@127.0.0.1:5432/test", "unknown scheme 'postgresq'"),
            ("study.db", "looks like an SQLite file; write it as sqlite:///study.db"),
        ],
    )
    def test_malformed_url_fails_when_the_arguments_are_built(self, url, expected, tmp_path):
        with pytest.raises(ValueError, match=r"^storage: ") as info:
            OptunaTrainingArguments(output_dir=str(tmp_path), storage=url)
        assert expected in str(info.value)
        assert SECRET not in str(info.value)


def _open_at_once(out_dir: str, barrier, results) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    barrier.wait(timeout=60)
    try:
        storage = open_storage(None, out_dir).storage
        optuna.create_study(storage=storage, study_name="same", load_if_exists=True)
        results.put("ok")
    except Exception as err:  # noqa: BLE001 - reported to the test
        results.put(f"{type(err).__name__}: {err}")


@pytest.mark.processes
def test_searches_creating_the_same_default_file_at_once_all_start(tmp_path):
    """Four workers of one command open the same new SQLite file at the same instant: without the lock around the
    schema creation, some fail with "table studies already exists" (seen in 5 of 5 tries)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    for attempt in range(2):
        out_dir = str(tmp_path / f"out-{attempt}")
        barrier, results = context.Barrier(4), context.Queue()
        procs = [context.Process(target=_open_at_once, args=(out_dir, barrier, results)) for _ in range(4)]
        for proc in procs:
            proc.start()
        try:
            outcomes = [results.get(timeout=120) for _ in procs]
        finally:
            for proc in procs:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
        assert outcomes == ["ok"] * 4
        (summary,) = optuna.get_all_study_summaries(f"sqlite:///{out_dir}/optuna_study.db")
        assert summary.study_name == "same"
