"""Figure 16: figure 2's search through `OptunaTrainer` and through transformers' `hyperparameter_search(backend="ray")`
with Ray Tune's ASHA, live, side by side.

The same model_init, data, space (`tasks.SPACE`: learning_rate log 1e-6..1e-3, weight_decay 0..0.1), `n_trials`,
steps and evaluation schedule, objective eval_accuracy maximized:

- ours: `OptunaTrainer` with the project's defaults (TPE, the default pruner keyed by training samples,
  skip_duplicates; the median pruner until figure 15's held-out check, `step_percentile` since),
  TPE seeded, in-memory storage, no best model written;
- Ray: `Trainer.hyperparameter_search(backend="ray")` as transformers documents it, with
  `scheduler=ASHAScheduler(metric="objective", mode="max")` (its defaults: grace period 1 report, reduction factor 4;
  `max_t` set to the evaluations of one trial), its default search (random draws), and `resources_per_trial` of both
  cores, so that one trial runs at a time with the same threads as ours. transformers reports to Ray at every
  evaluation with a checkpoint of the model (its `_tune_save_checkpoint`): that is part of what a Ray user pays.

Each run is a fresh interpreter under a hard timeout; the sides alternate (ours, Ray, ours, Ray, ...). Per run: wall
time, optimizer steps, best accuracy, the search's own time per trial (wall time minus the trials' training time,
over the trials) and peak memory (the largest sum of resident memory over the run's process tree, sampled every
0.2 s: Ray's raylet, GCS and workers count, as our process does).

    python benchmarks/ray_head_to_head.py              # MiniLM (first 3 layers), SST-2 subset, 14 trials, 2 rounds
    python benchmarks/ray_head_to_head.py --quick      # tiny BERT, 4 trials, 1 round (a smoke run)

Needs the `bench` extra (ray[tune], pinned).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

sys.path[:0] = [
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
]
import head_to_head  # noqa: E402
import measure  # noqa: E402
import sides  # noqa: E402
import tables  # noqa: E402
import tasks  # noqa: E402

NAME = "ray_head_to_head"
COLUMNS = [
    "run",
    "side",
    "completed/stopped",
    "optimizer steps",
    "best accuracy",
    "wall seconds",
    "search seconds per trial",
    "peak memory MiB (process tree)",
]


def ray_space(space: dict[str, dict[str, Any]]) -> Any:
    """`tasks.SPACE` in Ray Tune's terms: what a Ray user hands transformers as hp_space."""
    from ray import tune

    def hp_space(trial: Any) -> dict[str, Any]:
        values = {}
        for name, spec in space.items():
            if spec.get("log"):
                values[name] = tune.loguniform(spec["low"], spec["high"])
            else:
                values[name] = tune.uniform(spec["low"], spec["high"])
        return values

    return hp_space


def ours(s: dict[str, Any], data: str) -> dict[str, Any]:
    from optuna_trainer.space.pruners import DEFAULT_PRUNER
    from optuna_trainer.study.attrs import read

    task = tasks.make_task(s["model"], data, s["n_train"], s["n_dev"], layers=s["layers"])
    out = tempfile.mkdtemp(prefix="ray-h2h-ours-")
    start = time.perf_counter()
    trainer = tasks.search_trainer(task, s, out, DEFAULT_PRUNER, [])
    trainer.hyperparameter_search()
    wall = time.perf_counter() - start
    trials = trainer.study.trials
    accuracies = [v for t in trials for v in t.intermediate_values.values()]
    return {
        "completed": sum(t.state.name == "COMPLETE" for t in trials),
        "stopped": sum(t.state.name == "PRUNED" for t in trials),
        "steps": sum(read(t).get("steps", 0) for t in trials),
        "best accuracy": max(accuracies),
        "wall": wall,
        "trial seconds": sum(read(t).get("seconds", 0.0) for t in trials),
        "trials": len(trials),
    }


def ray_side(s: dict[str, Any], data: str) -> dict[str, Any]:
    import ray
    from ray.tune.schedulers import ASHAScheduler
    from transformers import Trainer, TrainingArguments

    task = tasks.make_task(s["model"], data, s["n_train"], s["n_dev"], layers=s["layers"])
    out = tempfile.mkdtemp(prefix="ray-h2h-ray-")
    evaluations = s["steps"] // s["eval_steps"]
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    trainer = Trainer(
        model_init=task.model_init,
        args=TrainingArguments(**tasks.train_args(out, **tasks.schedule(s))),
        train_dataset=task.train,
        eval_dataset=task.dev,
        compute_metrics=tasks.compute_metrics,
        data_collator=task.collator,
    )
    best = trainer.hyperparameter_search(
        hp_space=ray_space(tasks.SPACE),
        compute_objective=lambda metrics: metrics["eval_accuracy"],
        n_trials=s["n_trials"],
        direction="maximize",
        backend="ray",
        scheduler=ASHAScheduler(metric="objective", mode="max", max_t=evaluations),
        resources_per_trial={"cpu": 2},
        storage_path=os.path.join(out, "ray_results"),
        verbose=0,
    )
    wall = time.perf_counter() - start
    analysis = best.run_summary
    results = [r for frame in analysis.trial_dataframes.values() for r in frame.to_dict("records")]
    finished = [t.last_result for t in analysis.trials]
    ray.shutdown()
    iterations = [r.get("training_iteration", 0) for r in finished]
    return {
        "completed": sum(i >= evaluations for i in iterations),
        "stopped": sum(i < evaluations for i in iterations),
        "steps": sum(i * s["eval_steps"] for i in iterations),
        "best accuracy": max(r["eval_accuracy"] for r in results if "eval_accuracy" in r),
        "wall": wall,
        "trial seconds": sum(r.get("time_total_s", 0.0) for r in finished),
        "trials": len(finished),
    }


class TreePeak:
    """The largest sum of resident memory over a process and its descendants, sampled every 0.2 s while `watching`."""

    def __init__(self) -> None:
        self.mib = 0.0

    @contextlib.contextmanager
    def watching(self, pid: int) -> Iterator[None]:
        stop = threading.Event()
        sampler = threading.Thread(target=self._sample, args=(pid, stop), daemon=True)
        sampler.start()
        try:
            yield
        finally:
            stop.set()
            sampler.join()

    def _sample(self, pid: int, stop: threading.Event) -> None:
        import psutil

        try:
            root = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    continue
            self.mib = max(self.mib, total / 2**20)
            stop.wait(0.2)


def run_one(script: str, side: str, argv: list[str], timeout: float) -> dict[str, Any]:
    peak = TreePeak()
    result = sides.run_side(script, side, argv, timeout, while_running=peak.watching)
    result["peak MiB"] = peak.mib
    return result


LABELS = {"ours": "OptunaTrainer (project defaults)", "ray": "hyperparameter_search(backend='ray'), ASHA"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = sides.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None, help="ours-then-Ray rounds (default 2; --quick 1)")
    a = p.parse_args(argv)
    s = head_to_head.settings(a.quick, a.model)
    if a.side:
        sides.quiet()
        sides.write_side(a.side_out, ours(s, a.data) if a.side == "ours" else ray_side(s, a.data))
        return {}
    passthrough = [*(["--quick"] if a.quick else []), "--data", a.data, *(["--model", a.model] if a.model else [])]
    rounds = a.rounds or (1 if a.quick else 2)
    load_before = measure.loadavg()
    rows = []
    for i in range(rounds):
        for side in ("ours", "ray"):
            r = run_one(os.path.abspath(__file__), side, passthrough, timeout=1200)
            rows.append(
                {
                    "run": i + 1,
                    "side": LABELS[side],
                    "completed/stopped": f"{r['completed']}/{r['stopped']}",
                    "optimizer steps": r["steps"],
                    "best accuracy": round(r["best accuracy"], 4),
                    "wall seconds": round(r["wall"], 1),
                    "search seconds per trial": round((r["wall"] - r["trial seconds"]) / max(r["trials"], 1), 2),
                    "peak memory MiB (process tree)": round(r["peak MiB"]),
                    "raw": r,
                }
            )
            print(" | ".join(str(v) for k, v in rows[-1].items() if k != "raw"), flush=True)
    medians = {
        side: {
            c: round(statistics.median(row[c] for row in rows if row["side"] == LABELS[side]), 2)
            for c in ("wall seconds", "optimizer steps", "search seconds per trial", "peak memory MiB (process tree)")
        }
        for side in LABELS
    }
    meta = {
        "command": tables.command_line(),
        "settings": {**s, "space": tasks.SPACE},
        "medians per side": medians,
        "loadavg before": load_before,
        "loadavg after": measure.loadavg(),
    }
    notes = [
        "search seconds per trial: (wall time - the trials' own training time) / trials; ours: the trials' "
        "`seconds` attribute; Ray: each trial's time_total_s",
        "Ray checkpoints the model at every evaluation report (transformers' _tune_save_checkpoint); ours saves "
        "nothing with save_best_model=False",
        "the sides draw different configurations (TPE seeded vs Ray's random search): best accuracy compares what "
        "each default finds with the same budget of trials, not the same trials",
    ]
    tables.write_table(
        a.out, NAME, "Live: OptunaTrainer vs transformers' Ray Tune backend with ASHA", COLUMNS, rows, meta, notes
    )
    return {"rows": rows, "medians": medians}


if __name__ == "__main__":
    main()
