"""Figure 6: one worker vs two worker processes on one PostgreSQL study: finished trials per minute.

Each worker is its own process running `OptunaTrainer.hyperparameter_search()` on the shared study (same
`study_name`, `storage`), with one torch thread (`OMP_NUM_THREADS=1`, `torch.set_num_threads(1)`), pruner none, so
that every trial is the same amount of work. One worker runs N trials on a fresh study; then two workers run together
on another fresh study with n_trials = 2N (each stops when the study has 2N finished trials). Throughput is finished
trials over the span from the first trial's start to the last trial's end, read from the study (process start-up is
excluded; the wall time including it is shown too). The studies get unique names and are deleted afterwards. Where
PostgreSQL does not answer, an SQLite file is used instead and the table says so. Target: at least 1.8x with two.

    python benchmarks/parallel_workers.py            # default: BERT (4 layers, hidden 128) from a config, N = 8
    python benchmarks/parallel_workers.py --quick    # CI: tiny BERT, N = 3
    python benchmarks/parallel_workers.py --launcher # the same through `optuna-trainer workers N` (figure 9)

With `--launcher` the workers are started by `optuna-trainer workers 1` and `optuna-trainer workers 2` instead of by
hand: the launcher picks the storage (a journal file under the shared output_dir) and the threads (cores / N per
worker: 2 for one worker on this machine, 1 each for two), everything else is the same. One worker runs twice: on
one thread (`OMP_NUM_THREADS=1`, which the launcher keeps; figure 6's baseline) and on the launcher's split (every
core), and the table gives two workers' speed-up against both.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

# benchmarks/ (its shared modules) and the repository root (tests.support: the tiny models and recorders)
sys.path[:0] = [
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
]
import measure  # noqa: E402
import sides  # noqa: E402
import tables  # noqa: E402
import tasks  # noqa: E402

from tests.support import kill_process_tree  # noqa: E402

NAME = "parallel_workers"
COLUMNS = [
    "workers",
    "finished trials",
    "trial span seconds",
    "trials per minute",
    "speed-up",
    "wall seconds",
    "storage",
]
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TARGET = 1.8


def settings(quick: bool, model: str | None) -> dict[str, Any]:
    if quick:
        return dict(model=model or "tiny-bert", n_train=64, n_dev=32, steps=4, n_trials=3, batch=16)
    return dict(model=model or "small-bert", n_train=256, n_dev=64, steps=20, n_trials=8, batch=16)


def worker(
    s: dict[str, Any],
    data: str,
    storage: str | None,
    study_name: str,
    n_trials: int,
    seed: int,
    output_dir: str | None = None,
) -> None:
    import contextlib

    import torch

    if output_dir is None:
        torch.set_num_threads(1)  # by hand; the launcher sets OMP_NUM_THREADS itself
    else:  # under the launcher: what this worker really got, read back into the table
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, f"threads-{os.getpid()}.txt"), "w", encoding="utf-8") as f:
            f.write(str(torch.get_num_threads()))
    sides.quiet()
    from optuna_trainer import OptunaTrainer, OptunaTrainingArguments

    task = tasks.make_task(s["model"], data, s["n_train"], s["n_dev"])
    place = contextlib.nullcontext(output_dir) if output_dir else tempfile.TemporaryDirectory()
    with place as out:
        args = OptunaTrainingArguments(
            **tasks.train_args(out, max_steps=s["steps"], per_device_train_batch_size=s["batch"], eval_strategy="no"),
            hp_space=tasks.SPACE,
            n_trials=n_trials,
            sampler={"name": "tpe", "seed": seed},
            pruner="none",
            storage=storage,
            study_name=study_name,
            objective_metric="accuracy",
            save_best_model=False,
        )
        trainer = OptunaTrainer(
            model_init=task.model_init,
            args=args,
            train_dataset=task.train,
            eval_dataset=task.dev,
            compute_metrics=tasks.compute_metrics,
            data_collator=task.collator,
        )
        trainer.hyperparameter_search()


def postgres_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            return True
    except OSError:
        return False


def run_workers(n_workers: int, s: dict[str, Any], a: Any, storage: str, study_name: str) -> dict[str, Any]:
    import optuna

    total = s["n_trials"] * n_workers
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": tables.REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    start = time.perf_counter()
    procs = []
    for i in range(n_workers):
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--side",
            "worker",
            "--storage",
            storage,
            "--study-name",
            study_name,
            "--n-trials",
            str(total),
            "--seed",
            str(i),
            "--data",
            a.data,
            *(["--quick"] if a.quick else []),
            *(["--model", a.model] if a.model else []),
        ]
        procs.append(subprocess.Popen(cmd, env=env, start_new_session=True))
    deadline = start + 900
    for proc in procs:
        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            for q in procs:
                kill_process_tree(q)
            raise RuntimeError(f"{n_workers} worker(s) did not finish within 900 s") from None
        if rc != 0:
            raise RuntimeError(f"a worker exited with {rc}")
    wall = time.perf_counter() - start
    return throughput(optuna.load_study(study_name=study_name, storage=storage), wall)


def throughput(study: Any, wall: float) -> dict[str, Any]:
    """Finished trials per minute over the span from the first trial's start to the last trial's end."""
    finished = [t for t in study.trials if t.state.is_finished() and t.datetime_complete is not None]
    span = (max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)).total_seconds()
    return {
        "finished trials": len(finished),
        "trial span seconds": span,
        "trials per minute": 60.0 * len(finished) / span,
        "wall seconds": wall,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = sides.parser(__doc__.splitlines()[0])
    p.add_argument("--storage", default=None, help=f"storage URL (default {POSTGRES}, SQLite if it does not answer)")
    p.add_argument("--study-name", default=None, help="(worker) the shared study")
    p.add_argument("--n-trials", type=int, default=None, help="(worker) the study's n_trials")
    p.add_argument("--seed", type=int, default=0, help="(worker) sampler seed")
    p.add_argument("--output-dir", default=None, help="(worker) a shared output_dir (under the launcher)")
    p.add_argument("--launcher", action="store_true", help="start the workers with optuna-trainer workers N")
    a = p.parse_args(argv)
    s = settings(a.quick, a.model)
    if a.side == "worker":
        worker(s, a.data, a.storage, a.study_name, a.n_trials, a.seed, a.output_dir)
        return {}
    if a.launcher:
        return main_launcher(a, s)
    import optuna

    tmp = tempfile.mkdtemp(prefix="parallel-workers-")
    if a.storage:
        storage, storage_label = a.storage, a.storage
    elif postgres_answers():
        storage, storage_label = POSTGRES, "PostgreSQL 127.0.0.1:5432"
    else:
        storage = "sqlite:///" + os.path.join(tmp, "study.db")
        storage_label = "SQLite file (PostgreSQL at 127.0.0.1:5432 does not answer)"
    tag = uuid.uuid4().hex[:8]
    load_before = measure.loadavg()
    rows, names = [], []
    try:
        for n in (1, 2):
            names.append(f"bench-parallel-{tag}-{n}w")
            rows.append({"workers": n, **run_workers(n, s, a, storage, names[-1]), "storage": storage_label})
            print(rows[-1], flush=True)
    finally:
        for name in names:
            try:
                optuna.delete_study(study_name=name, storage=storage)
            except KeyError:
                pass
    load_after = measure.loadavg()
    speedup = rows[1]["trials per minute"] / rows[0]["trials per minute"]
    rows[0]["speed-up"], rows[1]["speed-up"] = 1.0, speedup
    meta = {
        "command": tables.command_line(),
        "model": tasks.model_label(s["model"]),
        "data": tasks.load_sentences(a.data, s["n_train"], s["n_dev"])[2],
        "settings": {**s, "space": tasks.SPACE, "pruner": "none", "torch threads per worker": 1},
        "target": f"speed-up >= {TARGET}",
        "target met": speedup >= TARGET,
        "studies deleted": names,
        "loadavg before": load_before,
        "loadavg after": load_after,
    }
    tables.write_table(a.out, NAME, "Parallel workers on one study: finished trials per minute", COLUMNS, rows, meta)
    return {"rows": rows, "speed-up": speedup}


def run_launcher(
    n_workers: int, s: dict[str, Any], a: Any, out: str, study_name: str, threads: int | None = None
) -> dict[str, Any]:
    """One `optuna-trainer workers N` run on a fresh study in `out` (its default storage: a journal file).

    `threads` None: the launcher's own split (cores / N per worker); a number: `OMP_NUM_THREADS` set by the user,
    which the launcher keeps.
    """
    import optuna

    total = s["n_trials"] * n_workers
    worker_cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--side",
        "worker",
        "--output-dir",
        out,
        "--study-name",
        study_name,
        "--n-trials",
        str(total),
        "--data",
        a.data,
        *(["--quick"] if a.quick else []),
        *(["--model", a.model] if a.model else []),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = tables.REPO + os.pathsep + os.environ.get("PYTHONPATH", "")
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "optuna_trainer.cli", "workers", str(n_workers), "--no-progress", "--", *worker_cmd]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        rc = proc.wait(timeout=900)
    except subprocess.TimeoutExpired:
        kill_process_tree(proc)
        raise RuntimeError(f"optuna-trainer workers {n_workers} did not finish within 900 s") from None
    if rc != 0:
        raise RuntimeError(f"optuna-trainer workers {n_workers} exited with {rc}")
    wall = time.perf_counter() - start
    journal = optuna.storages.journal.JournalFileBackend(os.path.join(out, "optuna_journal.log"))
    study = optuna.load_study(study_name=study_name, storage=optuna.storages.JournalStorage(journal))
    seen = set()
    for name in os.listdir(out):
        if name.startswith("threads-"):
            with open(os.path.join(out, name), encoding="utf-8") as f:
                seen.add(int(f.read()))
    if len(seen) != 1:
        raise RuntimeError(f"the workers of `workers {n_workers}` ran with different torch thread counts: {seen}")
    return {**throughput(study, wall), "threads per worker": seen.pop()}


def main_launcher(a: Any, s: dict[str, Any]) -> dict[str, Any]:
    """Three runs: 1 worker on one thread (figure 6's baseline), 1 worker on the launcher's split (every core), 2.

    The speed-up is against the one-thread worker, as in figure 6; the one against a single worker that has every
    core (what a user who does not use the launcher gets by default) is shown beside it.
    """
    load_before = measure.loadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="launcher-bench-") as tmp:
        for n, threads in ((1, 1), (1, None), (2, None)):
            out = os.path.join(tmp, f"{n}w-{threads}")
            row = run_launcher(n, s, a, out, f"{n}w", threads)
            rows.append({"workers": n, **row, "storage": "journal file (the launcher's default)"})
            print(rows[-1], flush=True)
    one_thread, all_cores, two = (r["trials per minute"] for r in rows)
    speedup = two / one_thread
    for row in rows:
        row["speed-up"] = row["trials per minute"] / one_thread
        row["vs 1 worker on every core"] = row["trials per minute"] / all_cores
    meta = {
        "command": tables.command_line(),
        "model": tasks.model_label(s["model"]),
        "data": tasks.load_sentences(a.data, s["n_train"], s["n_dev"])[2],
        "settings": {**s, "space": tasks.SPACE, "pruner": "none"},
        "target": f"speed-up (2 workers vs 1 worker on one thread, as figure 6) >= {TARGET}",
        "target met": speedup >= TARGET,
        "loadavg before": load_before,
        "loadavg after": measure.loadavg(),
    }
    columns = [*COLUMNS[:-1], "vs 1 worker on every core", "threads per worker", "storage"]
    title = "optuna-trainer workers N: finished trials per minute"
    tables.write_table(a.out, NAME + "_launcher", title, columns, rows, meta)
    return {"rows": rows, "speed-up": speedup}


if __name__ == "__main__":
    main()
