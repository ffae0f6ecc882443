"""A search under real 2-process groups on the CPU (gloo), launched as users launch it.

Each test launches `search_script.py` with `accelerate launch --multi_gpu --num_processes 2` (or torchrun) under a
hard wall-clock bound: the whole process group is killed at the bound and the test fails, it never hangs. Every rank
writes what it saw to `rank<r>.json`; the tests compare the ranks and read the study rank 0 kept.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

# run_bounded kills the launcher's group and every worker below it past the bound (torchrun starts each worker in a
# session of its own).
from tests.support import accelerate_launch, run_bounded

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = Path(__file__).with_name("search_script.py")
# Startup (imports, two processes on two shared cores) takes most of a run (30-60 s measured); the searches train for
# seconds. The bound is ours (the process group is killed); pytest-timeout's, above it, is only a last resort.
BOUND_S = 240
WELL_WITHIN_S = 180

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(BOUND_S + 60)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Run:
    def __init__(self, returncode: int, seconds: float, output: str, out_dir: Path) -> None:
        self.returncode = returncode
        self.seconds = seconds
        self.output = output
        self.ranks = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
        # What each rank's last exit handler saw: the process groups that outlived the search's own handlers.
        self.at_exit = [json.loads((out_dir / f"rank{r}.exit.json").read_text()) for r in (0, 1)]

    @property
    def trials(self) -> list[dict[str, Any]]:
        return self.ranks[0]["trials"]


def launch(scenario: str, out_dir: Path, launcher: str = "accelerate") -> Run:
    port = _free_port()
    if launcher == "accelerate":
        cmd = accelerate_launch(2, port)
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    cmd += [str(SCRIPT), "--scenario", scenario, "--out", str(out_dir)]
    start = time.monotonic()
    returncode, output = run_bounded(cmd, BOUND_S, cwd=ROOT, env=launch_env())
    seconds = time.monotonic() - start
    print(f"{scenario} ({launcher}): exit {returncode} after {seconds:.1f}s")
    return Run(returncode, seconds, output, out_dir)


def launch_env() -> dict[str, str]:
    """One torch thread per process (two processes share two cores), this checkout first on the path, offline."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def assert_clean_end(run: Run, *, rebuilt: bool) -> None:
    """Every rank ended without an abort, and the search left no process group of its own to the interpreter's exit.

    A gloo group alive when the interpreter finalizes can abort its process after the search has finished
    ("terminate called without an active exception", SIGABRT): the launcher then exits non-zero, or not, depending on
    timing. So beyond the exit code, each rank records which groups are left: after the search only the default one;
    at exit the default one only where accelerate made it (`rebuilt=False`); one the search re-created after a failed
    trial (`rebuilt=True`) is destroyed by the search at exit.
    """
    for mark in ("terminate called", "SIGABRT", "Signal 6", "exitcode  : -6", "exitcode: -6"):
        assert mark not in run.output, run.output[-4000:]
    for rank, (record, at_exit) in enumerate(zip(run.ranks, run.at_exit, strict=True)):
        assert record["groups_after_search"] == 1, (rank, record["groups_after_search"])
        assert at_exit == ({"initialized": False, "groups": 0} if rebuilt else {"initialized": True, "groups": 1})


def assert_same_on_both_ranks(run: Run) -> None:
    rank0, rank1 = run.ranks
    # The values each rank trained with (floats as float.hex: bit-identical, not merely close).
    assert rank0["used"] and rank0["used"] == rank1["used"]
    # A parameter suggested only inside model_init(trial).
    assert rank0["model_init"] and rank0["model_init"] == rank1["model_init"]
    # ... and they are the float64 values the study recorded, not a rounded copy.
    for trial in run.trials:
        used = rank0["used"].get(str(trial["number"]))
        if used is None:
            continue
        for key in (
            "learning_rate",
            "weight_decay",
            "per_device_train_batch_size",
            "model.attention_probs_dropout_prob",
        ):
            assert used[key] == trial["params"][key], (trial["number"], key)
        assert used["model.hidden_dropout_prob"] == trial["params"]["model_init_dropout"]
        assert rank0["model_init"][str(trial["number"])] == trial["params"]["model_init_dropout"]


def test_pruned_trials_stop_every_rank_at_the_same_step(tmp_path: Path) -> None:
    run = launch("prune", tmp_path)
    assert run.returncode == 0, run.output[-4000:]
    assert_clean_end(run, rebuilt=False)
    assert run.seconds < WELL_WITHIN_S
    states = [t["state"] for t in run.trials]
    assert len(states) == 6
    assert "PRUNED" in states and "COMPLETE" in states
    rank0, rank1 = run.ranks
    # Every rank stopped each trial at the same global step; pruned ones before max_steps=8.
    assert rank0["stopped_at"] == rank1["stopped_at"]
    for trial in run.trials:
        stopped = rank0["stopped_at"][str(trial["number"])]
        if trial["state"] == "PRUNED":
            assert stopped == trial["user_attrs"]["pruned_at_step"] < 8
        else:
            assert stopped == 8
        # Two processes: an optimizer step consumes batch x 2 samples, the unit of the pruning step.
        batch = trial["params"]["per_device_train_batch_size"]
        assert trial["user_attrs"]["samples_per_step"] == 2 * batch
        assert trial["user_attrs"]["samples"] == stopped * 2 * batch
    # Evaluations at equal samples whatever the batch: every 2 steps of the arguments' batch 8 on 2 processes, i.e.
    # every 32 samples (a batch-4 trial evaluates every 4 steps), so each trial's keys start the same sequence.
    for trial in run.trials:
        assert trial["intermediate"] == [32 * (i + 1) for i in range(len(trial["intermediate"]))], trial
    assert {t["params"]["per_device_train_batch_size"] for t in run.trials if t["intermediate"]} == {4, 8}
    assert_same_on_both_ranks(run)
    # The same BestRun on both ranks; only rank 0 holds the study.
    assert rank0["best"] == rank1["best"]
    best = min((t for t in run.trials if t["state"] == "COMPLETE"), key=lambda t: t["value"])
    run_id, objective, hyperparameters = rank0["best"]
    assert (run_id, objective) == (str(best["number"]), best["value"])
    assert {k: v.hex() if isinstance(v, float) else v for k, v in hyperparameters.items()} == best["params"]
    assert rank0["study_is_none"] is False and rank1["study_is_none"] is True
    # Only the main process wrote the best model.
    assert (tmp_path / "best_model" / "trial.json").is_file()
    assert json.loads((tmp_path / "best_model" / "trial.json").read_text())["number"] == int(rank0["best"][0])


def test_a_repeat_trains_on_no_rank(tmp_path: Path) -> None:
    """skip_duplicates under DDP: rank 0 finds the twin and shares it; no rank trains the repeat, and both end the
    search with the same BestRun."""
    run = launch("repeat", tmp_path)
    assert run.returncode == 0, run.output[-4000:]
    assert_clean_end(run, rebuilt=False)
    assert [t["state"] for t in run.trials] == ["COMPLETE"] * 4
    first: dict[Any, dict[str, Any]] = {}
    for trial in run.trials:
        twin = first.setdefault(trial["params"]["learning_rate"], trial)
        if twin is trial:
            assert "duplicate_of" not in trial["user_attrs"]
        else:
            assert trial["user_attrs"]["duplicate_of"] == twin["number"] and trial["value"] == twin["value"]
            assert trial["intermediate"] == twin["intermediate"]
    trained = {str(t["number"]) for t in first.values()}
    assert len(trained) == 2  # 2 configurations, 4 trials: 2 repeats
    rank0, rank1 = run.ranks
    assert set(rank0["stopped_at"]) == set(rank1["stopped_at"]) == trained
    assert rank0["best"] == rank1["best"]


def test_a_trial_failing_on_rank_1_only_fails_on_all_and_the_study_goes_on_with_catch(tmp_path: Path) -> None:
    run = launch("fail", tmp_path)
    assert run.returncode == 0, run.output[-4000:]
    assert_clean_end(run, rebuilt=True)
    assert run.seconds < WELL_WITHIN_S
    assert [t["state"] for t in run.trials] == ["COMPLETE", "FAIL", "FAIL", "COMPLETE"]
    # Trial 1: rank 1 raised in the middle of training. The cause recorded is rank 1's own error, not rank 0's
    # timeout in the all-reduce rank 1 never joined; then the process groups are rebuilt and the study goes on.
    reason = run.trials[1]["user_attrs"]["fail_reason"]
    assert reason.startswith("ValueError: boom on rank 1 at step 3") and "failed on rank 1" in reason
    # Trial 2: rank 1 raised at an evaluation while rank 0 was in the pruning exchange.
    reason = run.trials[2]["user_attrs"]["fail_reason"]
    assert reason.startswith("ValueError: eval boom on rank 1 at step 4") and "failed on rank 1" in reason
    rank0, rank1 = run.ranks
    # Neither rank finished a failed trial; both trained the next one with the same values, to the end.
    assert rank0["stopped_at"] == rank1["stopped_at"] == {"0": 8, "3": 8}
    assert_same_on_both_ranks(run)
    assert rank0["best"] == rank1["best"]
    assert "error" not in rank0 and "error" not in rank1


def test_without_catch_every_rank_stops_with_the_error(tmp_path: Path) -> None:
    run = launch("fail_nocatch", tmp_path)
    assert run.returncode != 0
    assert run.seconds < WELL_WITHIN_S
    assert [t["state"] for t in run.trials] == ["COMPLETE", "FAIL"]
    for rank in run.ranks:
        assert rank["error"] == "ValueError: boom on rank 1 at step 3"
        assert "best" not in rank
    # An error ends the search before its last exchange: its groups (and the default group it re-created after the
    # failed trial) end at exit, and no rank aborts there.
    assert "terminate called" not in run.output, run.output[-4000:]
    assert run.at_exit == [{"initialized": False, "groups": 0}] * 2


def test_timeout_ends_every_rank(tmp_path: Path) -> None:
    # torchrun this time: the same search under the other launcher.
    run = launch("timeout", tmp_path, launcher="torchrun")
    assert run.returncode == 0, run.output[-4000:]
    assert_clean_end(run, rebuilt=False)
    assert run.seconds < WELL_WITHIN_S
    rank0, rank1 = run.ranks
    # n_trials=1000 with timeout=6s: rank 0 stopped the study early and both ranks ended after the same trials.
    assert 1 <= len(run.trials) < 1000
    assert all(t["state"] == "COMPLETE" for t in run.trials)
    assert sorted(rank0["used"], key=int) == sorted(rank1["used"], key=int) == [str(t["number"]) for t in run.trials]
    assert_same_on_both_ranks(run)
    assert rank0["best"] == rank1["best"]


def test_one_trial_means_one_set_of_values_on_every_rank(tmp_path: Path) -> None:
    run = launch("rank_mismatch", tmp_path)
    assert run.returncode == 0, run.output[-4000:]
    assert_clean_end(run, rebuilt=True)
    assert run.seconds < WELL_WITHIN_S  # an error on both ranks, not a gloo timeout
    assert [t["state"] for t in run.trials] == ["FAIL", "FAIL", "COMPLETE"]
    # Trial 0: hp_space computed weight_decay per process; caught at the trial's start, on every rank.
    reason = run.trials[0]["user_attrs"]["fail_reason"]
    assert "hp_space['weight_decay']: the processes got different values (rank 0: 0.01, rank 1: 0.02)" in reason
    # Trial 1: rank 1 asked for one parameter more than rank 0.
    reason = run.trials[1]["user_attrs"]["fail_reason"]
    assert "did not ask for the same parameters" in reason and "rank 1 suggests 'weight_decay'" in reason
    rank0, rank1 = run.ranks
    assert rank0["used"] == rank1["used"] and list(rank0["used"]) == ["2"]  # no rank trained a mismatched trial
    assert rank0["best"] == rank1["best"]
