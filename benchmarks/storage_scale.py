"""Figure 14: many workers on one study, straight to PostgreSQL and through Optuna's gRPC storage proxy.

Light workers (no model: a trial reports 4 intermediate values, `should_prune()` after each, sleeping between them
like a short trial's evaluations) run the project's own study loop (search/loop.py: the claim lock, the budget count,
fail_stale_trials) on one study with a shared `n_trials`: once each worker opening PostgreSQL itself (the project's
storage: heartbeats on, its advisory claim lock), once through `optuna-trainer storage-proxy` (grpc://: one process
holds the database connections). Workers are forked from this process after its imports (no torch), all started
together. Recorded: finished trials per second (first trial's start to the last trial's end), the peak of PostgreSQL
connections to the database (`pg_stat_activity`, sampled every 0.2 s, the benchmark's own, less those open before),
workers that failed (exceptions, e.g. "too many clients"), and whether exactly `n_trials` finished.

    python benchmarks/storage_scale.py            # 64 and 128 workers, 3 trials per worker
    python benchmarks/storage_scale.py --quick    # CI: 8 workers, 2 trials each
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

sys.path[:0] = [
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
]
import tables  # noqa: E402

NAME = "storage_scale"
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# The benchmark's workers and proxy connect under a name of their own, and only those connections are counted: other
# clients of the same database (another test running beside this one, a dashboard) are not this figure's.
APPLICATION = f"optuna_trainer_storage_scale_{os.getpid()}"
COUNTED = f"{POSTGRES}?application_name={APPLICATION}"
COLUMNS = [
    "workers",
    "path",
    "n_trials",
    "finished",
    "exact budget",
    "trials per second",
    "peak PostgreSQL connections",
    "failed workers",
    "first error",
]
STEPS = 4
STEP_SLEEP_S = 0.25


def objective(trial: Any) -> float:
    x = trial.suggest_float("x", -1.0, 1.0)
    for step in range(1, STEPS + 1):
        time.sleep(STEP_SLEEP_S)
        trial.report(x * x + 1.0 / step, step)
        if trial.should_prune():
            import optuna

            raise optuna.TrialPruned()
    return x * x


def worker(storage_url: str, study_name: str, n_trials: int, start: Any, errors: Any) -> None:
    import optuna

    from optuna_trainer.search.loop import run_trials
    from optuna_trainer.study.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    start.wait()
    try:
        opened = open_storage(storage_url, ".", heartbeat_interval=60)
        study = optuna.load_study(study_name=study_name, storage=opened.storage)
        run_trials(
            study,
            objective,
            n_trials=n_trials,
            lock=opened.make_lock(study_name),
            heartbeat_interval=opened.heartbeat_interval,
        )
    except Exception as err:  # noqa: BLE001 - counted and shown in the table
        errors.put(f"{type(err).__name__}: {str(err).splitlines()[0][:160]}")
        # os._exit skips the queue's feeder thread: flush it first, or the message is lost.
        errors.close()
        errors.join_thread()
        os._exit(1)
    os._exit(0)


def connections() -> int:
    import sqlalchemy

    engine = sqlalchemy.create_engine(POSTGRES, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        return int(
            conn.execute(
                sqlalchemy.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname='test' AND application_name=:app"
                ),
                {"app": APPLICATION},
            ).scalar()
        )


def run(n_workers: int, n_trials: int, storage_url: str, label: str) -> dict[str, Any]:
    import optuna

    from optuna_trainer.study.storage import open_storage

    direct = open_storage(POSTGRES, ".", heartbeat_interval=None).storage
    study_name = f"bench-scale-{uuid.uuid4().hex[:10]}"
    optuna.create_study(study_name=study_name, storage=direct, pruner=optuna.pruners.MedianPruner())
    before = connections()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                peak[0] = max(peak[0], connections())
            except Exception:  # noqa: BLE001 - the server refusing the sampler too is part of the result
                pass
            time.sleep(0.2)

    ctx = multiprocessing.get_context("fork")
    start, errors = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(storage_url, study_name, n_trials, start, errors)) for _ in range(n_workers)
    ]
    for p in procs:
        p.start()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start.set()
    for p in procs:
        p.join(timeout=600)
        if p.is_alive():
            p.kill()
    done.set()
    sampler.join()
    failed = sum(p.exitcode != 0 for p in procs)
    messages = []
    while not errors.empty():
        messages.append(errors.get())
    study = optuna.load_study(study_name=study_name, storage=direct)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    span = (
        (max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)).total_seconds()
        if finished
        else float("nan")
    )
    optuna.delete_study(study_name=study_name, storage=direct)
    return {
        "workers": n_workers,
        "path": label,
        "n_trials": n_trials,
        "finished": len(finished),
        "exact budget": len(finished) == n_trials,
        "trials per second": len(finished) / span if span else float("nan"),
        "peak PostgreSQL connections": peak[0] - before,
        "failed workers": failed,
        "first error": messages[0] if messages else "",
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="*", help="worker counts to run (default 64 128)")
    parser.add_argument("--out", default=tables.DEFAULT_OUT)
    a = parser.parse_args(argv)
    sizes, per_worker = ((8,), 2) if a.quick else ((64, 128), 3)
    sizes = tuple(a.sizes) if a.sizes else sizes
    from tests.support import QUIET_ENV, free_port, kill_process_tree, service_answers

    port = free_port()
    proxy = subprocess.Popen(
        [sys.executable, "-m", "optuna_trainer.cli", "storage-proxy", "--storage", COUNTED, "--port", str(port)],
        env={**os.environ, **QUIET_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    rows = []
    try:
        deadline = time.monotonic() + 60
        while not service_answers("127.0.0.1", port, timeout=0.5):
            if proxy.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the storage proxy did not start")
            time.sleep(0.2)
        for n in sizes:
            rows.append(run(n, n * per_worker, COUNTED, "PostgreSQL, direct"))
            rows.append(run(n, n * per_worker, f"grpc://127.0.0.1:{port}", "gRPC proxy"))
    finally:
        kill_process_tree(proxy)
    notes = [
        f"each trial: {STEPS} reports {STEP_SLEEP_S} s apart, should_prune after each (MedianPruner); the project's "
        "study loop (claim lock, budget count) in every worker",
        f"PostgreSQL max_connections: {max_connections()}; the proxy holds its own pool (one process)",
    ]
    tables.write_table(
        a.out,
        NAME,
        "Figure 14: many workers on one study, direct and through the gRPC storage proxy",
        COLUMNS,
        rows,
        {"command": "python benchmarks/storage_scale.py" + (" --quick" if a.quick else "")},
        notes,
    )
    return {"rows": rows}


def max_connections() -> int:
    import sqlalchemy

    engine = sqlalchemy.create_engine(POSTGRES, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        return int(conn.execute(sqlalchemy.text("SHOW max_connections")).scalar())


if __name__ == "__main__":
    main()
