"""Kills leave nothing half-written: a checkpoint cut short is never resumed from, and best_model/ is replaced whole,
its trial.json always naming the trial whose weights it holds."""

from __future__ import annotations

import hashlib
import json
import time

import optuna
import pytest
from optuna.trial import TrialState

from optuna_trainer.output.best_model import BEST_MODEL_DIR, INCOMING, OUTGOING, recover
from optuna_trainer.search.resume import last_complete_checkpoint
from tests.support import kill_process_tree, start_worker, wait_all, wait_for_file

HP = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _checkpoint(run_dir, step: int, state: str | None) -> None:
    path = run_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if state is not None:
        (path / "trainer_state.json").write_text(state, encoding="utf-8")


def test_the_newest_complete_checkpoint_is_taken_and_cut_ones_removed(tmp_path):
    _checkpoint(tmp_path, 2, '{"global_step": 2}')
    _checkpoint(tmp_path, 4, None)  # killed after the weights, before trainer_state.json
    _checkpoint(tmp_path, 6, '{"global_st')  # killed in the middle of trainer_state.json
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
    (tmp_path / "checkpoint-2" / "trainer_state.json").unlink()
    assert last_complete_checkpoint(str(tmp_path)) is None


def test_recover_puts_the_previous_best_back_when_the_swap_was_cut(tmp_path):
    (tmp_path / OUTGOING).mkdir()
    (tmp_path / OUTGOING / "trial.json").write_text('{"number": 3}', encoding="utf-8")
    (tmp_path / INCOMING).mkdir()  # the new best, half written
    recover(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [BEST_MODEL_DIR]
    assert json.loads((tmp_path / BEST_MODEL_DIR / "trial.json").read_text())["number"] == 3


@pytest.mark.processes
def test_a_kill_mid_checkpoint_resumes_from_the_checkpoint_before(tmp_path):
    """The state a SIGKILL while writing checkpoint-4 leaves: its weights, no trainer_state.json."""
    out_dir, marker, record = tmp_path / "out", tmp_path / "paused", tmp_path / "steps.jsonl"
    spec = {
        "output_dir": str(out_dir),
        "storage": None,
        "study_name": "cut",
        "n_trials": 2,
        "heartbeat_interval": 1,
        "pruner": "none",
        "save_strategy": "steps",
        "save_steps": 2,
        "hp_space": HP,
        "_test": {"record": str(record), "marker": str(marker), "pause_run": "run-1", "pause_step": 4},
    }
    proc = start_worker(spec, tmp_path / "first.log")
    wait_for_file(marker, proc, tmp_path / "first.log", timeout=120)
    kill_process_tree(proc)
    (out_dir / "run-1" / "checkpoint-4" / "trainer_state.json").unlink()
    time.sleep(2.5)  # the killed trial's heartbeat goes stale
    (result,) = wait_all([(start_worker(spec, tmp_path / "second.log"), tmp_path / "second.log")], timeout=150)

    study = optuna.load_study(study_name="cut", storage=f"sqlite:///{out_dir / 'optuna_study.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[2].user_attrs["resumed_from_checkpoint"] == str(out_dir / "run-1" / "checkpoint-2")
    runs = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(r["run_dir"].rsplit("/", 1)[-1], r["first_step"]) for r in runs][-1] == ("run-1", 3)
    assert result["finished"] == 2


@pytest.mark.processes
def test_a_kill_in_the_middle_of_saving_the_best_model_leaves_the_previous_best_whole(tmp_path):
    out_dir, marker, saves = tmp_path / "out", tmp_path / "paused", tmp_path / "saves.jsonl"
    spec = {
        "output_dir": str(out_dir),
        "storage": None,
        "study_name": "best",
        "n_trials": 3,
        "heartbeat_interval": 1,
        "pruner": "none",
        "hp_space": HP,
        "_test": {"every_trial_best": True, "best_saves": str(saves), "pause_best_save": 2, "marker": str(marker)},
    }
    proc = start_worker(spec, tmp_path / "first.log")
    wait_for_file(marker, proc, tmp_path / "first.log", timeout=120)
    kill_process_tree(proc)  # trial 1's weights are written beside best_model/, not yet swapped in
    best = out_dir / BEST_MODEL_DIR
    recorded = [json.loads(line) for line in saves.read_text().splitlines()]
    assert (out_dir / INCOMING / "model.safetensors").is_file()
    assert json.loads((best / "trial.json").read_text())["number"] == 0
    assert _sha256(best / "model.safetensors") == recorded[0]["sha256"]  # trial 0's weights, with trial 0's record

    time.sleep(2.5)
    spec["_test"] = {"every_trial_best": True, "best_saves": str(saves)}
    wait_all([(start_worker(spec, tmp_path / "second.log"), tmp_path / "second.log")], timeout=150)
    recorded = [json.loads(line) for line in saves.read_text().splitlines()]
    number = json.loads((best / "trial.json").read_text())["number"]
    study = optuna.load_study(study_name="best", storage=f"sqlite:///{out_dir / 'optuna_study.db'}")
    assert number == study.best_trial.number == max(t.number for t in study.trials if t.state == TrialState.COMPLETE)
    run_dir = study.trials[number].user_attrs["run_dir"]
    assert _sha256(best / "model.safetensors") == [r for r in recorded if r["run_dir"] == run_dir][-1]["sha256"]
    assert not (out_dir / INCOMING).exists() and not (out_dir / OUTGOING).exists()
