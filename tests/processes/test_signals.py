"""SIGTERM as Ctrl-C during a search (processes/signals.py): the running trial FAILs and is queued again, once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from optuna_trainer.processes.signals import interrupt_on_sigterm
from tests.support import kill_process_tree

REPO = Path(__file__).resolve().parents[2]
BOUND_S = 240


def test_sigterm_raises_keyboard_interrupt_once_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with interrupt_on_sigterm():
            assert signal.getsignal(signal.SIGTERM) is not before
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler runs here
                pytest.fail("SIGTERM did not interrupt")
            except KeyboardInterrupt:
                os.kill(os.getpid(), signal.SIGTERM)  # a second one while the first is handled: ignored
                time.sleep(0.1)
                raise
    assert signal.getsignal(signal.SIGTERM) is before


# A worker as Slurm stops it: SIGTERM to the search process itself, twice (the cluster's and a launcher's). The
# search installs the handler itself (Search.run_trials): the script is the user's, unchanged.
WORKER = """
import json, sys
from tests.support_worker import main
main(json.loads(sys.argv[1]))
"""


@pytest.mark.processes
def test_a_search_given_sigterm_marks_its_trial_fail_and_queues_it_again_once(tmp_path):
    out, marker, journal = tmp_path / "out", tmp_path / "paused", tmp_path / "journal.log"
    spec = {
        "output_dir": str(out),
        "storage": str(journal),
        "hp_space": {"learning_rate": {"type": "categorical", "choices": [1e-3, 2e-3, 3e-3]}},
        "sampler": "grid",
        "n_trials": 3,
        "pruner": "none",  # every trial trains to the end: the states are the check
        "save_strategy": "steps",
        "save_steps": 2,
        "_test": {"pause_run": "run-1", "pause_step": 2, "marker": str(marker)},
    }
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    log = tmp_path / "worker.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, json.dumps(spec)],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + BOUND_S
    while not marker.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            kill_process_tree(proc)
            pytest.fail(f"trial 1 never paused; output:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    try:
        code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        kill_process_tree(proc)
        pytest.fail(f"the worker did not leave after SIGTERM; output:\n{log.read_text()[-4000:]}")
    text = log.read_text()
    assert code in (130, -signal.SIGINT), text[-4000:]  # it left as on Ctrl-C, not killed by SIGTERM
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name=out.name, storage=storage)
    assert [t.state.name for t in study.trials[:2]] == ["COMPLETE", "FAIL"]
    copies = [t for t in study.trials if t.system_attrs.get("failed_trial") == 1]
    assert len(copies) == 1 and copies[0].state.name == "WAITING" and copies[0].params == study.trials[1].params
    assert "SIGTERM: stopping as on Ctrl-C" in text

    # The same command continues the search: the queued copy resumes from the interrupted trial's checkpoint.
    spec["_test"] = {}
    again = subprocess.run(
        [sys.executable, "-c", WORKER, json.dumps(spec)], cwd=REPO, env=env, capture_output=True, timeout=BOUND_S
    )
    assert again.returncode == 0, again.stdout.decode()[-4000:] + again.stderr.decode()[-4000:]
    study = optuna.load_study(study_name=out.name, storage=storage)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 3 + ["FAIL"]
    (copy,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == 1]
    assert copy.state.name == "COMPLETE" and copy.user_attrs["resumed_from_checkpoint"].endswith("checkpoint-2")
