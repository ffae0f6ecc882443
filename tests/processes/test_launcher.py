"""`optuna-trainer workers N -- <command>`: N workers on one study, exact budget, a dead worker, Ctrl-C.

Every launch runs under a hard bound: past it the launcher's whole process tree is killed and the test fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from optuna_trainer.processes.launcher import Launcher, split_devices, with_port
from optuna_trainer.processes.worker_env import ENV_LAUNCH_DIR, LaunchEnv
from tests.support import accelerate_launch, kill_process_tree

BOUND_S = 300
REPO = Path(__file__).resolve().parents[2]


def grid(n: int) -> dict:
    return {"learning_rate": {"type": "categorical", "choices": [round(1e-3 * (i + 1), 6) for i in range(n)]}}


def launch(n_workers: int, spec: dict, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "tests.support_worker", json.dumps(spec)]
    return subprocess.Popen(
        [sys.executable, "-m", "optuna_trainer.cli", "workers", str(n_workers), *extra, "--", *command],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait(proc: subprocess.Popen[bytes], log: Path, bound: float = BOUND_S) -> int:
    try:
        return proc.wait(timeout=bound)
    except subprocess.TimeoutExpired:
        kill_process_tree(proc)
        pytest.fail(f"the launcher ran past {bound} s; its output:\n{log.read_text()[-4000:]}")


def load(out: Path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "optuna_journal.log"))
    )
    return optuna.load_study(study_name=out.name, storage=storage)


@pytest.mark.processes
@pytest.mark.parametrize("n_workers", [2, 4])
def test_exact_budget_and_one_report(tmp_path, n_workers):
    out = tmp_path / "out"
    n_trials = 2 * n_workers
    spec = {
        "output_dir": str(out),
        "storage": None,
        "hp_space": grid(n_trials),
        "sampler": "grid",
        "pruner": "none",  # every trial trains to the end: processes, not pruning, are checked here
        "n_trials": n_trials,
    }
    spec["_test"] = {"trial_sleep": 0.5}  # trials overlap across workers
    log = tmp_path / "launcher.log"
    assert wait(launch(n_workers, spec, log), log) == 0, log.read_text()[-4000:]
    text = log.read_text()
    study = load(out)  # the default storage under the launcher: a journal file under output_dir
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(study.trials) == len(trials) == n_trials
    assert sorted(t.params["learning_rate"] for t in trials) == sorted(grid(n_trials)["learning_rate"]["choices"])
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == n_workers  # every worker ran trials
    # Workers' lines carry their prefix; the report is printed once, by the launcher.
    assert all(f"[worker {i}] " in text for i in range(n_workers))
    assert text.count(f"Optuna search '{out.name}':") == 1
    assert text.count("Search report written to") == 1
    assert (out / "report" / "summary.json").is_file()
    # One progress view over the whole study (in a log: a line per change), none from the workers.
    shown = [int(m) for m in re.findall(rf"\[launcher\] (\d+)/{n_trials} trials finished", text)]
    assert shown and shown == sorted(set(shown)) and shown[-1] == n_trials
    assert not re.search(r"\[worker \d+\] .*(trials|steps):", text)
    # best_model/ holds the study's best trial, written by whichever worker ran it.
    record = json.loads((out / "best_model" / "trial.json").read_text())
    assert record["number"] == study.best_trial.number and record["value"] == study.best_value
    assert not (out / "best_model.incoming").exists()


@pytest.mark.services
@pytest.mark.processes
def test_a_given_postgresql_storage_is_used_by_every_worker(tmp_path):
    """`--storage <PostgreSQL URL>`: the workers share that study (no journal file), with the exact budget."""
    import uuid

    from tests.support import require_service

    require_service("PostgreSQL", "127.0.0.1", 5432)
    url = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    out = tmp_path / f"launcher-pg-{uuid.uuid4().hex[:8]}"  # the study is named after output_dir
    spec = {"output_dir": str(out), "storage": None, "hp_space": grid(4), "sampler": "grid", "n_trials": 4}
    spec["pruner"] = "none"  # every trial trains to the end: the COMPLETE trials are the check
    spec["_test"] = {"trial_sleep": 0.5}
    log = tmp_path / "launcher.log"
    try:
        assert wait(launch(2, spec, log, "--storage", url), log) == 0, log.read_text()[-4000:]
        study = optuna.load_study(study_name=out.name, storage=url)
        finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        assert len(study.trials) == len(finished) == 4
        assert sorted(t.params["learning_rate"] for t in finished) == grid(4)["learning_rate"]["choices"]
        assert len({t.user_attrs["worker"] for t in finished}) == 2
        assert not (out / "optuna_journal.log").exists() and not (out / "optuna_study.db").exists()
    finally:
        try:
            optuna.delete_study(study_name=out.name, storage=url)
        except KeyError:
            pass


@pytest.mark.processes
def test_a_dead_worker_is_reported_and_its_trial_retried(tmp_path):
    out = tmp_path / "out"
    marker = tmp_path / "paused"
    record = tmp_path / "record.jsonl"
    spec = {
        "output_dir": str(out),
        "storage": None,
        "hp_space": grid(4),
        "sampler": "grid",
        "n_trials": 4,
        "pruner": "none",  # every trial trains to the end: the count of COMPLETE trials is the check
        "save_strategy": "steps",
        "save_steps": 2,
        "_test": {"pause_run": "run-1", "pause_step": 4, "marker": str(marker), "record": str(record)},
    }
    log = tmp_path / "launcher.log"
    proc = launch(2, spec, log)
    deadline = time.monotonic() + BOUND_S
    while not marker.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            kill_process_tree(proc)
            pytest.fail(f"trial 1 never paused; output:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    paused = next(
        json.loads(line)["pid"]
        for line in record.read_text().splitlines()
        if json.loads(line)["run_dir"].endswith("run-1")
    )
    os.kill(paused, signal.SIGKILL)  # the worker dies in the middle of trial 1
    assert wait(proc, log) == 0, log.read_text()[-4000:]
    text = log.read_text()
    assert "died (signal 9); trial(s) [1] marked FAIL and queued again" in text
    study = load(out)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 4 and states.count("FAIL") == 1 and "RUNNING" not in states
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == 1)
    assert retry.state.name == "COMPLETE" and retry.params == study.trials[1].params
    # The retry continued from trial 1's checkpoint (step 4), in its run folder.
    first_steps = [json.loads(line) for line in record.read_text().splitlines()]
    assert any(r["run_dir"].endswith("run-1") and r["first_step"] == 5 for r in first_steps)


@pytest.mark.processes
def test_workers_with_isolated_trials(tmp_path):
    # isolate_trials under the launcher: each worker keeps its part of the study, and each trial runs in a process of
    # its own, started by that worker.
    out = tmp_path / "out"
    record = tmp_path / "record.jsonl"
    spec = {
        "output_dir": str(out),
        "storage": None,
        "hp_space": grid(4),
        "sampler": "grid",
        "pruner": "none",  # every trial trains to the end: processes, not pruning, are checked here
        "n_trials": 4,
        "isolate_trials": True,
        "_test": {"record": str(record)},
    }
    log = tmp_path / "launcher.log"
    assert wait(launch(2, spec, log), log) == 0, log.read_text()[-4000:]
    study = load(out)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert sorted(t.params["learning_rate"] for t in study.trials) == grid(4)["learning_rate"]["choices"]
    workers = {int(t.user_attrs["worker"].rpartition(":")[2]) for t in study.trials}
    trained = [json.loads(line) for line in record.read_text().splitlines()]
    # Four trainings, each in a process of its own: neither worker trained in its own process.
    assert len(trained) == 4 and len({r["pid"] for r in trained}) == 4
    assert not {r["pid"] for r in trained} & workers
    record_best = json.loads((out / "best_model" / "trial.json").read_text())
    assert record_best["number"] == study.best_trial.number and record_best["value"] == study.best_value


@pytest.mark.processes
def test_ctrl_c_stops_every_worker_and_leaves_the_study_consistent(tmp_path):
    out = tmp_path / "out"
    spec = {
        "output_dir": str(out),
        "storage": None,
        "hp_space": grid(20),
        "sampler": "grid",
        "pruner": "none",  # every trial trains to the end: processes, not pruning, are checked here
        "n_trials": 20,
        "_test": {"trial_sleep": 2},
    }
    log = tmp_path / "launcher.log"
    proc = launch(2, spec, log)
    deadline = time.monotonic() + BOUND_S
    while not re.search(r"\[launcher\] [1-9]\d*/20 trials finished", log.read_text() if log.exists() else ""):
        if time.monotonic() > deadline or proc.poll() is not None:
            kill_process_tree(proc)
            pytest.fail(f"no trial finished; output:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the launcher's whole process group
    assert wait(proc, log, bound=120) == 130, log.read_text()[-4000:]
    study = load(out)
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states and "COMPLETE" in states and len(states) < 20
    # The same command continues the study to its budget.
    spec["_test"] = {}
    log2 = tmp_path / "launcher2.log"
    assert wait(launch(2, spec, log2), log2) == 0, log2.read_text()[-4000:]
    study = load(out)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 20
    assert len({t.params["learning_rate"] for t in finished}) == 20  # each grid point once


def test_devices_are_split_and_packed():
    assert split_devices(4, 2, ["0", "1", "2", "3", "4", "5", "6", "7"]) == [
        ["0", "1"],
        ["2", "3"],
        ["4", "5"],
        ["6", "7"],
    ]
    assert split_devices(4, 1, ["0"]) == [["0"]] * 4  # four workers packed on one GPU
    assert split_devices(2, 1, []) == [[], []]


def test_cpu_workers_split_the_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    launcher = Launcher(["true"], 2)
    cores = len(os.sched_getaffinity(0))
    threads = [int(w.env["OMP_NUM_THREADS"]) for w in launcher.workers]
    assert threads == [max(1, cores // 2)] * 2 and sum(threads) <= max(cores, 2)
    ports = {w.env["MASTER_PORT"] for w in launcher.workers}
    assert len(ports) == 2  # a worker that is itself `accelerate launch` gets its own rendezvous port
    assert all(w.env[ENV_LAUNCH_DIR] == launcher.launch_dir for w in launcher.workers)


def test_a_worker_announces_its_study_in_a_private_file(tmp_path):
    env = LaunchEnv(worker=1, workers=2, launch_dir=str(tmp_path), storage=None)
    env.announce(storage="postgresql+psycopg://u:secret@h/db", study_name="s", output_dir="out", n_trials=3)
    path = tmp_path / "worker-1.json"
    assert json.loads(path.read_text())["study_name"] == "s"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the URL may hold a password


def test_memory_storage_cannot_be_shared_by_workers(tmp_path, monkeypatch):
    from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
    from tests.support import base_args, make_dataset, tiny_model

    monkeypatch.setenv(ENV_LAUNCH_DIR, str(tmp_path))
    args = OptunaTrainingArguments(**base_args(tmp_path / "out", storage="memory"))
    trainer = OptunaTrainer(
        model_init=tiny_model, args=args, train_dataset=make_dataset(16), eval_dataset=make_dataset(8)
    )
    with pytest.raises(ValueError, match=r"storage: 'memory' cannot be shared by the workers"):
        trainer.hyperparameter_search()


def test_an_accelerate_worker_gets_its_own_port():
    assert with_port(["accelerate", "launch", "train.py"], 1234) == [
        "accelerate",
        "launch",
        "--main_process_port",
        "1234",
        "train.py",
    ]
    python = ["python", "-m", "accelerate.commands.launch", "--num_processes", "2", "t.py"]
    assert with_port(python, 7)[:5] == ["python", "-m", "accelerate.commands.launch", "--main_process_port", "7"]
    given = ["accelerate", "launch", "--main_process_port", "5", "t.py"]
    assert with_port(given, 7) == given
    assert with_port(["python", "train.py"], 7) == ["python", "train.py"]  # torchrun and python read the env


@pytest.mark.processes
def test_each_worker_may_be_an_accelerate_launch_of_two_processes(tmp_path):
    out = tmp_path / "out"
    accelerate = [
        *accelerate_launch(2),
        str(REPO / "tests" / "processes" / "distributed" / "search_script.py"),
        "--scenario",
        "launcher",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = tmp_path / "launcher.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "optuna_trainer.cli", "workers", "2", "--", *accelerate],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert wait(proc, log) == 0, log.read_text()[-4000:]
    study = load(out)
    finished = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(study.trials) == len(finished) == 4
    assert sorted(t.params["learning_rate"] for t in finished) == [1e-3, 2e-3, 3e-3, 4e-3]
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # two launches of two processes each


def _descendants(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def _alive(pids: list[int]) -> list[int]:
    import psutil

    left = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.NoSuchProcess:
            pass
    return left


@pytest.mark.processes
def test_sigterm_stops_every_worker_queues_their_trials_again_and_the_same_command_continues(tmp_path):
    """What Slurm, Kubernetes and spot preemption send: the study is left as after Ctrl-C, with exit code 143."""
    out = tmp_path / "out"
    spec = {
        "output_dir": str(out),
        "storage": None,
        "hp_space": grid(12),
        "sampler": "grid",
        "pruner": "none",  # every trial trains to the end: processes, not pruning, are checked here
        "n_trials": 12,
        "_test": {"trial_sleep": 3},  # trials RUNNING when the signal comes
    }
    log = tmp_path / "launcher.log"
    proc = launch(2, spec, log)
    deadline = time.monotonic() + BOUND_S
    while not re.search(r"\[launcher\] [1-9]\d*/12 trials finished", log.read_text() if log.exists() else ""):
        if time.monotonic() > deadline or proc.poll() is not None:
            kill_process_tree(proc)
            pytest.fail(f"no trial finished; output:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    time.sleep(1.0)  # into the next trials' sleep: both workers hold a RUNNING trial
    running = [t.number for t in load(out).trials if t.state.name == "RUNNING"]
    children = _descendants(proc.pid)
    assert running and children
    os.kill(proc.pid, signal.SIGTERM)  # the launcher only, as `kill <pid>` or a pod's deletion
    assert wait(proc, log, bound=120) == 143, log.read_text()[-4000:]
    text = log.read_text()
    assert _alive(children) == [], f"left running: {_alive(children)}"
    assert "BrokenPipeError" not in text and "SIGTERM: stopping every worker" in text
    study = load(out)
    states = {t.number: t.state.name for t in study.trials}
    assert "RUNNING" not in states.values()
    # Each interrupted trial: FAIL, and queued again once with its parameters. A trial seen RUNNING just before the
    # signal may have finished before it arrived: then it is COMPLETE, and was not interrupted.
    interrupted = [number for number in running if states[number] != "COMPLETE"]
    assert interrupted, states
    for number in interrupted:
        assert states[number] == "FAIL"
        (copy,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == number]
        assert copy.state.name == "WAITING" and copy.params == study.trials[number].params
    # The same command continues the study to its budget, every grid point once.
    spec["_test"] = {}
    log2 = tmp_path / "launcher2.log"
    assert wait(launch(2, spec, log2), log2) == 0, log2.read_text()[-4000:]
    finished = [t for t in load(out).trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 12 and len({t.params["learning_rate"] for t in finished}) == 12


@pytest.mark.processes
def test_a_command_that_does_not_exist_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "optuna_trainer.cli", "workers", "2", "--", "no-such-cmd-xyz", "train.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 127
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "'no-such-cmd-xyz' not found on PATH" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    script = tmp_path / "train.sh"
    script.write_text("echo hi\n")  # not executable
    done = subprocess.run(
        [sys.executable, "-m", "optuna_trainer.cli", "workers", "1", "--", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 126 and "is not an executable file" in done.stderr and "Traceback" not in done.stderr


def test_more_worker_threads_than_cores_is_said_at_start(monkeypatch):
    import io

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # a 2-core machine
    out = io.StringIO()
    assert Launcher(["true"], 5, out=out, progress=False).run() == 1  # `true` starts no search
    first = out.getvalue().splitlines()[:2]
    assert "CPU, 1 thread(s) each" in first[0]
    assert first[1].startswith("[launcher] warning: 5 workers x 1 thread(s) each = 5 threads on 2 core(s)")
    out = io.StringIO()
    Launcher(["true"], 2, out=out, progress=False).run()
    assert "warning" not in out.getvalue()  # 2 workers x 1 thread fit 2 cores
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # the user's own value is kept, and counted
    out = io.StringIO()
    Launcher(["true"], 2, out=out, progress=False).run()
    assert "2 workers x 4 thread(s) each = 8 threads on 2 core(s)" in out.getvalue()
