"""Figure 2: the same search through `OptunaTrainer` and through transformers' `Trainer.hyperparameter_search`.

Same model_init, data, space (`tasks.SPACE`: learning_rate log 1e-6..1e-3, weight_decay 0..0.1), sampler
(`TPESampler(seed=0)`), pruner (Optuna's `MedianPruner()`, which is also what transformers gets by default),
`n_trials`, steps and evaluation schedule, objective eval_accuracy maximized. Each side runs in a fresh interpreter so
that its peak resident memory (ru_maxrss) is its own. Ours runs with `save_best_model=False` and in-memory storage,
so that neither side writes files.

    python benchmarks/head_to_head.py            # default: MiniLM (first 3 layers), SST-2 subset, 14 trials
    python benchmarks/head_to_head.py --quick    # CI: tiny BERT from a config
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
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

from tests.support import RecordingPruner, TrialRecorder  # noqa: E402

NAME = "head_to_head"
COLUMNS = [
    "side",
    "best trial",
    "best trial's value as reported",
    "best dev accuracy seen",
    "best trial's last accuracy",
    "completed/pruned",
    "optimizer steps",
    "wall seconds",
    "peak RSS MiB",
]


def settings(quick: bool, model: str | None) -> dict[str, Any]:
    if quick:
        return dict(
            model=model or "tiny-bert", layers=None, n_train=64, n_dev=64, steps=6, eval_steps=2, n_trials=4, batch=16
        )
    # 14 trials: TPE's 10 random start-up trials, then 4 drawn from its model of the values each side reported.
    return dict(
        model=model or "minilm", layers=3, n_train=1024, n_dev=128, steps=60, eval_steps=15, n_trials=14, batch=16
    )


def side(name: str, s: dict[str, Any], data: str) -> dict[str, Any]:
    import optuna

    sides.quiet()
    pruner = RecordingPruner(optuna.pruners.MedianPruner())
    task = tasks.make_task(s["model"], data, s["n_train"], s["n_dev"], layers=s["layers"])
    rec = TrialRecorder(tasks.SPACE)
    out = tempfile.mkdtemp(prefix=f"h2h-{name}-")
    start = time.perf_counter()
    if name == "ours":
        trainer = tasks.search_trainer(task, s, out, pruner, [rec])
        best = trainer.hyperparameter_search()
        states = [t.state.name for t in trainer.study.trials]
        params = [t.params for t in trainer.study.trials]
    else:
        from transformers import Trainer, TrainingArguments

        trainer = Trainer(
            model_init=task.model_init,
            args=TrainingArguments(**tasks.train_args(out, **tasks.schedule(s))),
            train_dataset=task.train,
            eval_dataset=task.dev,
            compute_metrics=tasks.compute_metrics,
            data_collator=task.collator,
            callbacks=[rec],
        )
        best = trainer.hyperparameter_search(
            hp_space=tasks.hf_space(),
            compute_objective=lambda metrics: metrics["eval_accuracy"],
            n_trials=s["n_trials"],
            direction="maximize",
            backend="optuna",
            sampler=optuna.samplers.TPESampler(seed=0),
            pruner=pruner,
        )
        states = ["PRUNED" if i in pruner.pruned else "COMPLETE" for i in range(len(rec.trials))]
        params = None
    seconds = time.perf_counter() - start
    best_index = int(best.run_id)
    return {
        "best trial": best_index,
        "best trial's value as reported": best.objective,
        "best params": best.hyperparameters,
        "best dev accuracy seen": rec.best_accuracy,
        "best trial's last accuracy": rec.trials[best_index]["accuracy"][-1],
        "best trial's accuracies": rec.trials[best_index]["accuracy"],
        "completed/pruned": f"{states.count('COMPLETE')}/{states.count('PRUNED')}",
        "optimizer steps": rec.steps,
        "wall seconds": seconds,
        "peak RSS MiB": measure.peak_rss_mib(),
        "trials": rec.trials,
        "params": params,
        "data": task.source,
        "model": task.model_name,
    }


def alike_from_first(ours: list[Any], theirs: list[Any]) -> int:
    """How many trials, from the first, drew the same values on both sides."""
    count = 0
    for x, y in zip(ours, theirs, strict=False):
        if x != y:
            break
        count += 1
    return count


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ran = sides.two_sides(__file__, __doc__, settings, side, argv)
    if ran is None:
        return {}
    a, s, results, load_before, load_after = ran
    rows = []
    for name, label in (("ours", "OptunaTrainer"), ("transformers", "Trainer.hyperparameter_search (optuna)")):
        rows.append({"side": label, **{c: results[name][c] for c in COLUMNS if c != "side"}})
    drawn_ours = [t["values"] for t in results["ours"]["trials"]]
    drawn_theirs = [t["values"] for t in results["transformers"]["trials"]]
    meta = {
        "command": tables.command_line(),
        "model": results["ours"]["model"],
        "data": results["ours"]["data"],
        "settings": {**s, "space": tasks.SPACE, "sampler": "TPESampler(seed=0)", "pruner": "MedianPruner()"},
        "best params (ours)": results["ours"]["best params"],
        "best params (transformers)": results["transformers"]["best params"],
        "same values drawn in every trial": drawn_ours == drawn_theirs,
        "trials drawn alike, from the first": alike_from_first(drawn_ours, drawn_theirs),
        "per-trial accuracies (ours)": [t["accuracy"] for t in results["ours"]["trials"]],
        "per-trial accuracies (transformers)": [t["accuracy"] for t in results["transformers"]["trials"]],
        "loadavg before": load_before,
        "loadavg after": load_after,
    }
    title = "Head-to-head: the same search, OptunaTrainer vs Trainer.hyperparameter_search"
    tables.write_table(a.out, NAME, title, COLUMNS, rows, meta)
    return {"rows": rows, "results": results}


if __name__ == "__main__":
    main()
