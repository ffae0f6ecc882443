"""Each benchmark script runs in --quick mode (a subprocess under a hard timeout) and writes its table as Markdown and
JSON with the expected columns, numeric figures, and the behaviour the figure is about (equal losses, the same values
drawn on both sides, the injected failure recorded, transformers' 2-process hang, the studies deleted).

Speed and memory targets are not asserted here: they are the benchmarks' output (docs/benchmarks.md), not unit tests.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import kill_process_tree as kill_group
from tests.support import run_bounded

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"

pytestmark = pytest.mark.benchmark  # several interpreters start per script: about a minute each on 2 cores


def load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def run_quick(
    name: str, out: Path, timeout: float = 420, extra: tuple[str, ...] = (), table: str | None = None
) -> dict[str, Any]:
    """Run `benchmarks/<name>.py --quick --out out`, kill its process group on timeout, return the JSON table.

    `table`: the name of the table the run writes, where it is not the module's `NAME` (its columns are then checked
    against the JSON's own list).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick", "--out", str(out), *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)  # the group and every descendant: launcher workers sit in sessions of their own
        proc.communicate()
        pytest.fail(f"benchmarks/{name}.py --quick did not finish within {timeout} s")
    assert proc.returncode == 0, output[-4000:]
    module = load(name)
    table_name = table or module.NAME
    md, js = out / f"{table_name}.md", out / f"{table_name}.json"
    assert md.is_file() and js.is_file()
    result = json.loads(js.read_text())
    if table is None:
        assert result["columns"] == module.COLUMNS
    header = "| " + " | ".join(result["columns"]) + " |"
    assert header in md.read_text()  # the Markdown table has the same columns
    assert header in output  # and it was printed
    assert result["meta"]["command"].startswith(f"python benchmarks/{name}.py --quick")
    assert result["meta"]["machine"]["nproc"] >= 1
    return result


def numbers(table: dict[str, Any], *columns: str) -> None:
    for row in table["rows"]:
        for column in columns:
            value = row[column]
            assert isinstance(value, (int, float)) and not isinstance(value, bool), (column, value)
            assert math.isfinite(value), (column, value)


def test_overhead(tmp_path):
    table = run_quick("overhead", tmp_path)
    numbers(table, "steps", "median seconds", "final training loss", "eval accuracy")
    meta = table["meta"]
    # The one-trial search trains exactly what Trainer.train() trains: the same loss, bit for bit.
    assert meta["losses identical"] is True and meta["max |loss ours - loss plain| over all runs"] == 0.0
    assert meta["ratio (median of pair ratios)"] > 0 and len(meta["pair ratios"]) == 2


def test_head_to_head(tmp_path):
    table = run_quick("head_to_head", tmp_path)
    numbers(
        table,
        "best trial",
        "best trial's value as reported",
        "best dev accuracy seen",
        "optimizer steps",
        "wall seconds",
        "peak RSS MiB",
    )
    ours, theirs = table["rows"]
    assert table["meta"]["same values drawn in every trial"] is True
    assert 0 < ours["optimizer steps"] <= 4 * 6 and 0 < theirs["optimizer steps"] <= 4 * 6
    # ours reports a trial's best evaluation: never below what that trial ended with
    assert ours["best trial's value as reported"] >= ours["best trial's last accuracy"]
    assert theirs["best trial's value as reported"] == theirs["best trial's last accuracy"]


def test_ray_head_to_head(tmp_path):
    """Figure 16's script, one round of both sides: transformers' Ray backend with ASHA runs the same budget of
    trials and steps as ours, and each side's figures are its own (the Ray side's process tree is larger)."""
    pytest.importorskip("ray.tune")
    table = run_quick("ray_head_to_head", tmp_path, extra=("--data", str(tmp_path / "no-sst2")))
    numbers(table, "optimizer steps", "best accuracy", "wall seconds", "search seconds per trial")
    ours, ray = table["rows"]
    assert (ours["run"], ray["run"]) == (1, 1) and "OptunaTrainer" in ours["side"] and "ray" in ray["side"]
    for row in (ours, ray):
        completed, stopped = map(int, row["completed/stopped"].split("/"))
        assert completed + stopped == 4 and 0 < row["optimizer steps"] <= 4 * 6
        assert 0.0 <= row["best accuracy"] <= 1.0 and row["search seconds per trial"] >= 0.0
    # Ray's cluster (raylet, GCS, a worker per trial) beside the trainer: more resident memory than our one process.
    assert ray["peak memory MiB (process tree)"] > ours["peak memory MiB (process tree)"] > 0


def test_pruning(tmp_path):
    # The generated task (no SST-2 folder) wherever the tests run, so that the outcome is the same everywhere.
    table = run_quick("pruning", tmp_path, extra=("--data", str(tmp_path / "no-sst2")))
    assert table["meta"]["data"].startswith("generated sentiment fallback")
    numbers(table, "optimizer steps", "steps saved vs none %", "wall seconds")
    none = table["rows"][0]
    assert none["spec"] == "none" and none["optimizer steps"] == 6 * 8  # every trial runs to the end
    assert none["completed/pruned"] == "6/0" and math.isfinite(none["best dev accuracy"])
    assert all(r["optimizer steps"] <= none["optimizer steps"] for r in table["rows"])
    assert any(r["completed/pruned"] != "6/0" for r in table["rows"][1:])  # some pruner did prune
    for row in table["rows"][1:]:
        saved = 100 * (1 - row["optimizer steps"] / none["optimizer steps"])
        assert row["steps saved vs none %"] == pytest.approx(saved)
        if row["completed/pruned"].startswith("0/"):  # every trial pruned: a row, not a crash; no best accuracy
            assert math.isnan(row["best dev accuracy"]) and row["target met"] == "no"
        else:
            assert math.isfinite(row["best dev accuracy"])


def test_pruning_curves_replay(tmp_path):
    # --quick records 4 tiny-BERT curves (the generated task), replays every row, and checks two live searches:
    # OptunaTrainer's (case 0) and transformers' own (case 2).
    extra = ("--data", str(tmp_path / "no-sst2"), "--live", "1", "--live-case", "2", "--live-trials", "3")
    table = run_quick("replay", tmp_path, extra=extra)
    rows = table["rows"]
    assert {r["sampler"] for r in rows} == {"random", "tpe"}
    assert [r["pruner"] for r in rows[:3]] == [
        "none",
        "transformers' default setting: median (defaults), eval_steps fixed in optimizer steps, step keys",
        "transformers' median (defaults), step keys, evaluations at equal samples",
    ]
    for row in rows:
        assert row["saved min"] <= row["saved median"] <= row["saved max"] <= 100.0
        if row["spec"] == "none":
            assert row["saved median"] == 0.0 and row["points median"] == 0.0
    live = json.loads((tmp_path / "pruning_curves_live.json").read_text())["rows"]
    ours, theirs = live
    assert ours["case"].endswith("(OptunaTrainer)") and theirs["case"].endswith("(transformers' own search)")
    for case in live:
        # The live search (OptunaTrainer's, and transformers' own for its row) drew the same configurations and
        # stopped the same trials at the same samples as the replay.
        assert case["same configurations"] == case["same states"] == case["same samples seen"] == "3/3"
    # OptunaTrainer trains as the curves were recorded, so it also ends at the same accuracies. (transformers' search
    # may not: its larger batches evaluate less often than the recording, every evaluation draws from torch's global
    # generator, and it reuses one Trainer across trials; docs/benchmarks.md figure 10.)
    assert ours["largest accuracy gap (points)"] == 0.0
    # skip_duplicates (the project's defaults): 6 trials over 4 configurations repeat at least 2; the live search
    # takes each repeat's evaluations, state and value from its twin, untrained, as the replay does.
    replay = load("replay")
    curves = replay.load_table(str(tmp_path / "curves_quick.json"))
    (repeats,) = replay.live_check(curves, [4], 6, str(tmp_path / "no-sst2"))
    assert repeats["same configurations"] == repeats["same states"] == repeats["same samples seen"] == "6/6"
    assert repeats["largest accuracy gap (points)"] == 0.0
    assert sum(t["samples"] == 0 for t in repeats["live"]) >= 2
    # The library's step_percentile in a live search prunes the trials its replay prunes, where the replay prunes.
    (step_percentile,) = replay.live_check(curves, [5], 6, str(tmp_path / "no-sst2"))
    assert step_percentile["same configurations"] == step_percentile["same states"] == "6/6"
    assert step_percentile["same samples seen"] == "6/6"
    assert sum(t["pruned"] for t in step_percentile["live"]) >= 2
    # --grid: the second grid's settings on the same curves, every one a real pruner that the replay can run.
    replay = load("replay")
    curves = replay.load_table(str(tmp_path / "curves_quick.json"))
    grid = replay.summarize(curves, 1, 4, ["random"], first_seed=5, settings=replay.grid_rows())
    assert [r["pruner"] for r in grid] == [r.label for r in replay.grid_rows()]
    assert grid[0]["spec"] == "none" and grid[0]["saved median"] == 0.0


def synthetic_table(values: dict[int, list[float]]) -> dict[str, Any]:
    """A curve table of batch sizes 8 and 16 (one configuration each), an evaluation every 32 samples up to 128;
    `values[batch]` the accuracy at each."""
    curves = [
        {
            "config": {"per_device_train_batch_size": batch},
            "points": [
                {"samples": 32 * (i + 1), "step": 32 * (i + 1) // batch, "accuracy": v, "loss": 1.0 - v}
                for i, v in enumerate(accuracies)
            ],
        }
        for batch, accuracies in values.items()
    ]
    space = {"per_device_train_batch_size": list(values)}
    return {"meta": {"settings": {"eval_samples": 32, "space": space}}, "curves": curves}


def test_transformers_default_row_evaluates_at_fixed_steps():
    # transformers keeps an integer eval_steps for every trial: 4 steps (32 samples at batch 8) is 64 samples at
    # batch 16, so a batch-16 trial is evaluated, reported and can be stopped only every 64 samples, keyed by step.
    replay = load("replay")
    table = synthetic_table({8: [0.5, 0.6, 0.7, 0.8], 16: [0.1, 0.1, 0.1, 0.1]})
    default, equal_samples = replay.transformers_rows()
    assert replay.fixed_eval_steps(table) == 4
    batch8, batch16 = (c["points"] for c in table["curves"])
    assert [p["samples"] for p in replay.evaluations(table, batch16, default)] == [64, 128]
    assert [p["samples"] for p in replay.evaluations(table, batch8, default)] == [32, 64, 96, 128]
    assert replay.evaluations(table, batch16, equal_samples) == batch16
    # Once five trials have completed, every batch-16 trial is judged against them and pruned at its first report
    # that meets a batch-8 value at the same key: at 32 samples keyed by samples (the project's default), at its
    # first evaluation (64 samples, step 4) with transformers' fixed steps, and at step 4 also when evaluated at
    # equal samples, since step 2 (32 samples) of batch 16 meets no batch-8 evaluation.
    project = replay.Row("project's default", "median")
    for row, reported in ((default, [4]), (equal_samples, [2, 4]), (project, [32])):
        trials = replay.replay_search(table, row, "random", seed=0, n_trials=20)
        judged = [
            t
            for i, t in enumerate(trials)
            if t["config"]["per_device_train_batch_size"] == 16 and sum(not u["pruned"] for u in trials[:i]) >= 5
        ]
        assert len(judged) >= 3, row.label
        for t in judged:
            assert t["pruned"] and t["reported at"] == reported, row.label
            assert t["samples"] == (reported[-1] if row.budget == "samples" else reported[-1] * 16), row.label


def test_a_second_curve_table_is_its_own_file(tmp_path):
    # Another subset seed is another table: its own file beside the first, never mixed into it, and the replay of a
    # table that is not finished is refused with what to do.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    common = ("--quick", "--out", str(tmp_path), "--data", str(tmp_path / "no-sst2"), "--seed", "1")
    record = subprocess.run(
        [sys.executable, str(BENCHMARKS / "curves.py"), *common, "--limit", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert record.returncode == 0, record.stdout[-2000:] + record.stderr[-2000:]
    table = json.loads((tmp_path / "curves_quick_seed1.json").read_text())
    assert table["meta"]["settings"]["seed"] == 1 and len(table["curves"]) == 1
    assert not (tmp_path / "curves_quick.json").exists()
    replay = subprocess.run(
        [sys.executable, str(BENCHMARKS / "replay.py"), *common],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert replay.returncode != 0
    assert "curves_quick_seed1.json holds 1 of the space's 4 configurations; finish it" in replay.stderr


def test_two_recorders_of_one_table_share_its_file(tmp_path):
    # `--shard 1/2` and `--shard 2/2` at once (one core each): each records the K-th of every 2 configurations of the
    # space that are not on record, and adds it to the file as it then is, under its lock, so neither overwrites the
    # other's curves. Shard 1 has recorded one of its two already: the shards are cut from the whole space, so shard 2
    # still takes both of its own (cut from what was missing, it would take one, whenever it started after a write).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    common = ("--quick", "--out", str(tmp_path), "--data", str(tmp_path / "no-sst2"))
    first = subprocess.run(
        [sys.executable, str(BENCHMARKS / "curves.py"), *common, "--shard", "1/2", "--limit", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert first.returncode == 0 and "0 configurations on record, 1 to record" in first.stdout, first.stdout[-2000:]
    recorders = [
        subprocess.Popen(
            [sys.executable, str(BENCHMARKS / "curves.py"), *common, "--shard", f"{k}/2"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for k in (1, 2)
    ]
    for proc, expected in zip(recorders, ("1 to record", "2 to record"), strict=True):
        try:
            output, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for other in recorders:
                other.kill()
            pytest.fail("a recorder did not finish within 300 s")
        assert proc.returncode == 0 and expected in output, output[-2000:]
    table = json.loads((tmp_path / "curves_quick.json").read_text())
    curves = load("curves")
    keys = sorted(curves.config_key(c["config"]) for c in table["curves"])
    assert keys == sorted(curves.config_key(c) for c in curves.configurations(curves.QUICK_SPACE))
    assert all(c["threads"] == 1 for c in table["curves"])
    bad = subprocess.run(
        [sys.executable, str(BENCHMARKS / "curves.py"), *common, "--shard", "3/2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode != 0 and "--shard: expected K/N with 1 <= K <= N, e.g. 1/2, got '3/2'" in bad.stderr


def test_memory(tmp_path):
    table = run_quick("memory", tmp_path)
    numbers(
        table,
        "trials",
        "RSS after trial 1 MiB",
        "RSS after trial N MiB",
        "RSS growth %",
        "peak RSS after trial 1 MiB",
        "peak RSS after trial N MiB",
        "peak RSS growth %",
        "RSS after the search MiB",
    )
    ours, theirs = table["rows"]
    for row in table["rows"]:
        assert row["states"][3] == "FAIL" and row["states"].count("FAIL") == 1  # the injected failure, caught
        assert len(row["RSS per trial MiB"]) == row["trials"]
        # "after trial N" is read when trial N + 1 starts; "after the search" when it returns
        per_trial = row["RSS per trial MiB"]  # rounded to 0.1 MiB
        assert row["RSS after trial N MiB"] == pytest.approx(per_trial[table["meta"]["N"] - 1], abs=0.06)
        assert row["RSS after the search MiB"] == pytest.approx(per_trial[-1], abs=0.06)
    # ours counts finished trials in n_trials=6 and replaces the failed one; transformers, which counts every trial,
    # is given n_trials=7: both run 7
    assert table["meta"]["N"] == 6 and theirs["trials"] == 7 and ours["trials"] == 7


@pytest.mark.distributed
def test_multi_process(tmp_path):
    table = run_quick("multi_process", tmp_path)
    numbers(table, "processes", "wall seconds")
    ours, theirs = table["rows"]
    assert ours["outcome"] == "completed" and ours["completed/pruned"] == "3/1"
    # transformers' backend: rank 0 leaves the pruned trial, rank 1 stays in it; killed, not waited for
    assert theirs["outcome"].startswith("hung") and theirs["timed out"] is True


@pytest.mark.services
def test_parallel_workers(tmp_path):
    table = run_quick("parallel_workers", tmp_path)
    numbers(table, "workers", "finished trials", "trial span seconds", "trials per minute", "speed-up")
    one, two = table["rows"]
    assert one["finished trials"] == 3 and two["finished trials"] >= 6
    if "PostgreSQL" in one["storage"]:
        import optuna

        names = optuna.get_all_study_names("postgresql+psycopg://postgres@127.0.0.1:5432/test")
        assert not set(table["meta"]["studies deleted"]) & set(names)


def test_parallel_workers_launcher(tmp_path):
    """Figure 9: one worker on one thread, one on the launcher's split, two workers; ratios against both baselines."""
    table = run_quick("parallel_workers", tmp_path, extra=("--launcher",), table="parallel_workers_launcher")
    numbers(table, "trials per minute", "speed-up", "vs 1 worker on every core")
    one_thread, all_cores, two = table["rows"]
    assert [r["workers"] for r in table["rows"]] == [1, 1, 2]
    # exact budget through the launcher: every run finished exactly its n_trials
    assert (one_thread["finished trials"], all_cores["finished trials"], two["finished trials"]) == (3, 3, 6)
    cores = table["meta"]["machine"]["nproc"]
    assert one_thread["threads per worker"] == 1  # OMP_NUM_THREADS=1 set by the user is kept by the launcher
    assert all_cores["threads per worker"] == cores and two["threads per worker"] == max(1, cores // 2)
    assert one_thread["speed-up"] == 1 and all_cores["vs 1 worker on every core"] == 1
    ratio = two["trials per minute"] / one_thread["trials per minute"]
    assert two["speed-up"] == pytest.approx(ratio)
    assert table["meta"]["target met"] == (ratio >= 1.8)


def test_adapters(tmp_path):
    pytest.importorskip("peft")
    table = run_quick("adapters", tmp_path)
    numbers(table, "median setup s", "peak RSS MiB", "peak growth during the search MiB", "best accuracy")
    ours, workaround = table["rows"]
    # the same 8 grid points trained on both sides, with adapters of the same sizes over the same base
    assert ours["trials"] == workaround["trials"] == 8
    assert ours["base model MiB"] == workaround["base model MiB"] > 0
    assert ours["adapter MiB (largest)"] == workaround["adapter MiB (largest)"] > 0
    assert table["meta"]["setup speedup (workaround / ours, medians)"] > 0


@pytest.mark.services
def test_artifact_store(tmp_path):
    """Figure 11: a real checkpoint up to a directory store and moto's S3 server and back, byte for byte."""
    table = run_quick("artifact_store", tmp_path)
    numbers(table, "checkpoint MB", "local write s", "upload s", "upload MB/s", "download + check s")
    assert [r["store"] for r in table["rows"]] == ["directory", "S3 (moto, 127.0.0.1)"]
    assert all(r["identical"] is True and r["checkpoint MB"] > 1 for r in table["rows"])


@pytest.mark.services
def test_storage_scale(tmp_path):
    """Figure 14 in small: workers on one PostgreSQL study, direct and through the gRPC proxy."""
    pytest.importorskip("grpc")
    table = run_quick("storage_scale", tmp_path, timeout=300)
    numbers(table, "workers", "n_trials", "finished", "trials per second", "peak PostgreSQL connections")
    direct, proxy = table["rows"]
    assert (direct["path"], proxy["path"]) == ("PostgreSQL, direct", "gRPC proxy")
    assert direct["workers"] == proxy["workers"] == 8 and direct["n_trials"] == proxy["n_trials"] == 16
    # Direct: the advisory claim lock makes the budget exact; no worker failed at 8 workers.
    assert direct["finished"] == 16 and direct["exact budget"] is True and direct["failed workers"] == 0
    # Through the proxy every worker finished, at most one trial each beyond the budget (docs/storage.md).
    assert proxy["failed workers"] == 0 and 16 <= proxy["finished"] <= 16 + 8
    # Each direct worker holds its own connection(s); the proxy's pool is shared.
    assert direct["peak PostgreSQL connections"] >= 8 > proxy["peak PostgreSQL connections"] >= 1


def test_oom_constraint_direct_counts_are_the_documented_ones():
    """Figure 12's ask/tell rows: the infeasible trials after startup for seeds 0-4, as docs/benchmarks.md states (the
    10 seeds take twice as long)."""
    seeds = [str(s) for s in range(5)]
    output = subprocess.run(
        [sys.executable, str(BENCHMARKS / "oom_constraint.py"), "--direct", "--seeds", *seeds],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert "constraint on (PRUNED + constraint): infeasible trials after startup per seed " in output
    assert "[4, 10, 8, 7, 10]; share 0.390" in output
    assert (
        "constraint off (FAIL): infeasible trials after startup per seed [12, 16, 17, 15, 17]; share 0.770" in output
    )


def test_isolation(tmp_path):
    """Figure 13 in small (a 1-layer BERT, 2 trials a side): both sides ran every trial, and an isolated trial costs
    more wall time than an in-process one (its process start), with the search process's RSS recorded per trial."""
    output = subprocess.run(
        [sys.executable, str(BENCHMARKS / "isolation.py"), "--model", "tiny-bert", "--trials", "2"],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=420,
        check=True,
    ).stdout
    sides = {}
    for line in output.splitlines():
        if line.startswith(("in-process: {", "isolated: {")):
            side, _, result = line.partition(": ")
            sides[side] = json.loads(result)
    base, iso = sides["in-process"], sides["isolated"]
    assert base["isolated"] is False and iso["isolated"] is True
    assert base["trials"] == iso["trials"] == 2
    assert len(base["rss_mib_after_trial"]) == len(iso["rss_mib_after_trial"]) == 2
    assert iso["median_trial_s"] > base["median_trial_s"] > 0
    assert "per-trial overhead of isolation (median): " in output


# Figure 10's documented rows (docs/benchmarks.md, the summary's row 10): per committed curve table, samples saved
# (median over 20 seeds, %) and the median best-accuracy difference against no pruning (points), for random and TPE,
# the median pruner (the project's default until figure 15's held-out check; every trial trained), the same with
# skip_duplicates (the defaults of that time) and transformers' default setting.
DOCUMENTED_REPLAY = {
    "curves.json": {
        "pruner": ((62.9, 0.0), (50.8, 0.0)),
        "defaults": ((70.0, 0.0), (69.4, 0.0)),
        "transformers": ((57.1, 0.0), (42.2, 0.0)),
    },
    "curves_n1024_seed1.json": {
        "pruner": ((58.3, 0.0), (47.3, -0.34)),
        "defaults": ((65.2, 0.0), (65.8, -0.34)),
        "transformers": ((46.2, 0.0), (35.8, -0.69)),
    },
    "curves_n1024_seed2.json": {
        "pruner": ((50.0, 0.0), (37.7, 0.0)),
        "defaults": ((59.4, 0.0), (59.2, 0.0)),
        "transformers": ((42.9, 0.0), (36.7, -0.34)),
    },
}


@pytest.mark.parametrize("table_file", sorted(DOCUMENTED_REPLAY))
def test_the_documented_replay_rows_of_each_committed_table(table_file):
    """The claims of figure 10 are what the replay gives on the committed tables today (no training: seconds)."""
    replay = load("replay")
    table = replay.load_table(str(BENCHMARKS / "results" / table_file))
    side = {
        replay.MEDIAN_PRUNER.label: "pruner",
        replay.MEDIAN_DEFAULTS.label: "defaults",
        replay.transformers_rows()[0].label: "transformers",
    }
    settings = [
        replay.Row("none", "none"),
        replay.transformers_rows()[0],
        replay.MEDIAN_PRUNER,
        replay.MEDIAN_DEFAULTS,
    ]
    rows = replay.summarize(table, 20, 30, ["random", "tpe"], settings=settings)
    found = {
        (r["sampler"], side[r["pruner"]]): (round(r["saved median"], 1), round(r["points median"], 2))
        for r in rows
        if r["spec"] != "none"
    }
    for name, (random_row, tpe_row) in DOCUMENTED_REPLAY[table_file].items():
        assert found[("random", name)] == random_row, (table_file, name)
        assert found[("tpe", name)] == tpe_row, (table_file, name)


def test_peers_on_a_committed_table(tmp_path):
    """benchmarks/peers.py (the `bench` extra): every method's row on one table, the project's rows computed by the
    same replay as figure 10, and the peers' schedulers stopping trials (fewer samples than no pruning)."""
    pytest.importorskip("syne_tune")
    pytest.importorskip("ray.tune")
    peers = load("peers")
    result = peers.main(["--seeds", "2", "--tables", "curves_n1024_seed2.json", "--out", str(tmp_path)])
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == list(peers.METHODS)
    replay = load("replay")
    table = replay.load_table(str(BENCHMARKS / "results" / "curves_n1024_seed2.json"))
    used = [
        sum(t["samples"] for t in replay.replay_search(table, replay.PROJECT_DEFAULT, "tpe", s, 30)) for s in (0, 1)
    ]
    full = 30 * table["curves"][0]["points"][-1]["samples"]
    assert rows["project's defaults (TPE, step_percentile at samples, skip_duplicates)"][
        "samples used % (median)"
    ] == round(100 * sum(used) / 2 / full, 1)
    for method, r in rows.items():
        assert 0 < r["samples used % (median)"] < 100, method
        assert 0 <= r["regret median"] <= r["regret worst"], method
        shares = [r[f"within 0.5 at {b}% (share)"] for b in peers.BUDGETS]
        assert shares == sorted(shares) and all(0 <= s <= 1 for s in shares), method
    assert (tmp_path / "peers.md").is_file() and (tmp_path / "peers.json").is_file()
    # A peer's row is the same on every run (the script seeds the generators Syne Tune and Ray draw from).
    for name in ("Syne Tune ASHA", "Ray Tune ASHA (AsyncHyperBandScheduler)", "Ray Tune HyperBandScheduler"):
        assert peers.METHODS[name](table, 3) == peers.METHODS[name](table, 3), name


def test_the_ray_asha_row_is_what_ray_tune_itself_does():
    """Figure 15's Ray ASHA row drives Ray Tune's scheduler directly; Ray Tune itself (`tune.run`: its controller,
    one trial at a time) on the same configurations and curves stops every trial at the same evaluation."""
    pytest.importorskip("ray.tune")
    peers = load("peers")
    replay = load("replay")
    table = replay.load_table(str(BENCHMARKS / "results" / "curves.json"))
    n = 14  # trial 13 is the first to pass the first rung and stop at the second
    # Ray's cluster (GCS, raylet, a worker per trial) runs in a process of its own whose whole tree is killed past the
    # bound: a hang fails the test and leaves nothing running.
    script = (
        f"import json, sys; sys.path[:0] = [{str(BENCHMARKS)!r}]; import peers, replay; "
        f"table = replay.load_table({str(BENCHMARKS / 'results' / 'curves.json')!r}); "
        f"print('LIVE', json.dumps(peers.ray_live_asha(table, 0, n_trials={n})))"
    )
    code, output = run_bounded([sys.executable, "-c", script], 240, cwd=REPO)
    assert code == 0, output[-4000:]
    live = [tuple(t) for t in json.loads(output.split("LIVE ", 1)[1].splitlines()[0])]
    assert [i for i, _ in live] == list(range(n))  # run in the order they were drawn
    driven = peers.METHODS["Ray Tune ASHA (AsyncHyperBandScheduler)"](table, 0)[:n]
    samples = [p["samples"] for p in table["curves"][0]["points"]]
    assert [evaluations for _, evaluations in live] == [samples.index(t["samples"]) + 1 for t in driven]
    assert {e for _, e in live} == {1, 4, 16}  # stopped at both rungs, and completed


# Figure 15's documented rows (docs/benchmarks.md): per committed table, samples used % (median) and median regret
# (points) over seeds 0-19, for the project's defaults (step_percentile since the held-out check), the median defaults
# before it, the nearest peers and the other candidates issue 25 names.
DOCUMENTED_PEERS = {
    "project's defaults (TPE, step_percentile at samples, skip_duplicates)": ((28.9, 0.0), (33.3, 0.0), (42.7, 0.0)),
    "the defaults before the held-out check (TPE, median at samples, skip_duplicates)": (
        (30.6, 0.46),
        (34.2, 0.34),
        (40.8, 0.0),
    ),
    "the same without skip_duplicates (TPE)": ((49.2, 0.23), (52.7, 0.34), (62.3, 0.0)),
    "Syne Tune ASHA": ((30.2, 0.46), (38.8, 0.0), (58.5, 0.0)),
    "Ray Tune ASHA (AsyncHyperBandScheduler)": ((24.7, 0.0), (32.3, 0.0), (41.5, 0.46)),
    "candidate: TPE, ASHA's rung cut (128 samples, factor 4), skip_duplicates": (
        (18.9, 0.23),
        (23.5, 0.69),
        (34.8, 0.0),
    ),
    "candidate: the median defaults, equal accuracies ordered by loss": ((28.9, 0.46), (33.3, 0.34), (36.2, 0.46)),
    "candidate: the median defaults, the middle of the space first": ((31.4, 0.0), (35.6, 0.0), (41.7, 0.0)),
    "candidate: TPE, Hyperband (128 samples, factor 3), skip_duplicates": ((33.3, 0.46), (35.0, 0.69), (40.8, 0.0)),
    "candidate: the step_percentile defaults, the middle of the space first": (
        (32.3, 0.0),
        (36.9, 0.0),
        (41.5, 0.0),
    ),
}


def test_the_documented_peer_rows_of_each_committed_table():
    """The claims of figure 15 are what the replay of each method gives on the committed tables today."""
    pytest.importorskip("syne_tune")
    pytest.importorskip("ray.tune")
    peers = load("peers")
    replay = load("replay")
    methods = peers.methods_to_replay(candidates=True, held_out=False)
    for i, table_file in enumerate(peers.TABLES):
        table = replay.load_table(str(BENCHMARKS / "results" / table_file))
        rows = peers.summarize(table_file, table, list(range(20)), {m: methods[m] for m in DOCUMENTED_PEERS})
        found = {r["method"]: (r["samples used % (median)"], r["regret median"]) for r in rows}
        assert found == {m: rows_[i] for m, rows_ in DOCUMENTED_PEERS.items()}, table_file


def test_the_held_out_table_is_not_replayed_with_the_candidates_weighed_after_its_check():
    peers = load("peers")
    later = set(peers.LATER_CANDIDATES)
    assert later and later <= set(peers.methods_to_replay(candidates=True, held_out=False))
    assert not later & set(peers.methods_to_replay(candidates=True, held_out=True))
    assert set(peers.CANDIDATES) <= set(peers.methods_to_replay(candidates=True, held_out=True))
    assert set(peers.methods_to_replay(candidates=False, held_out=True)) == set(peers.METHODS)


# The held-out check of figure 15 (docs/benchmarks.md, "The held-out check"): on the fourth table, replayed once under
# a rule set down before, the default pruner is the one the rule picked.
HELD_OUT_ROWS = {
    "project's defaults (TPE, step_percentile at samples, skip_duplicates)": (17.6, 0.46, "9/20"),
    "the defaults before the held-out check (TPE, median at samples, skip_duplicates)": (22.3, 0.46, "5/20"),
}


def test_the_held_out_check_picked_the_default_pruner():
    """The rule: step_percentile is the default if on the held-out table its median regret is no worse than the median
    default's, at no more than 3 points more of the budget. Its rows are what the replay gives today, and the library's
    default pruner is the one the rule picked."""
    from optuna_trainer.space.pruners import DEFAULT_PRUNER

    peers = load("peers")
    replay = load("replay")
    table = replay.load_table(str(BENCHMARKS / "results" / peers.HELD_OUT))
    assert len(table["curves"]) == 48  # whole: every configuration of the space recorded
    rows = peers.summarize(peers.HELD_OUT, table, list(range(20)), {m: peers.METHODS[m] for m in HELD_OUT_ROWS})
    found = {
        r["method"]: (r["samples used % (median)"], r["regret median"], r["best config found (runs)"]) for r in rows
    }
    assert found == HELD_OUT_ROWS
    candidate, median = (found[m] for m in HELD_OUT_ROWS)
    assert candidate[1] <= median[1] and candidate[0] <= median[0] + 3.0
    assert replay.PROJECT_DEFAULT.spec == DEFAULT_PRUNER == "step_percentile"
