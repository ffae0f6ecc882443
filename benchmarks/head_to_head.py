"""Figure 2: the same search through `OptunaTrainer` and through transformers' `Trainer.hyperparameter_search`.

Same model_init, data, space (`common.SPACE`: learning_rate log 1e-6..1e-3, weight_decay 0..0.1), sampler
(`TPESampler(seed=0)`), pruner (Optuna's `MedianPruner()`, which is also what transformers gets by default),
`n_trials`, steps and evaluation schedule, objective eval_accuracy maximized. Each side runs in a fresh interpreter so
that its peak resident memory (ru_maxrss) is its own. Ours runs with `save_best_model=False` and in-memory storage,
so that neither side writes files.

    python benchmarks/head_to_head.py            # default: MiniLM (first 3 layers), SST-2 subset, 6 trials
    python benchmarks/head_to_head.py --quick    # CI: tiny BERT from a config
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

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
        return dict(model=model or "tiny-bert", layers=None, n_train=64, n_dev=64, steps=6, eval_steps=2, n_trials=4,
                    batch=16)
    return dict(model=model or "minilm", layers=3, n_train=512, n_dev=128, steps=30, eval_steps=10, n_trials=6,
                batch=16)


def side(name: str, s: dict[str, Any], data: str) -> dict[str, Any]:
    import optuna

    common.quiet()
    task = common.make_task(s["model"], data, s["n_train"], s["n_dev"], layers=s["layers"])
    rec = common.recorder()
    train = dict(
        max_steps=s["steps"],
        per_device_train_batch_size=s["batch"],
        eval_strategy="steps",
        eval_steps=s["eval_steps"],
    )
    out = tempfile.mkdtemp(prefix=f"h2h-{name}-")
    start = time.perf_counter()
    if name == "ours":
        trainer = common.search_trainer(task, s, out, "median", [rec])
        best = trainer.hyperparameter_search()
        states = [t.state.name for t in trainer.study.trials]
        params = [t.params for t in trainer.study.trials]
    else:
        from transformers import Trainer, TrainingArguments

        trainer = Trainer(
            model_init=task.model_init, args=TrainingArguments(**common.train_args(out, **train)),
            train_dataset=task.train, eval_dataset=task.dev, compute_metrics=common.compute_metrics, data_collator=task.collator, callbacks=[rec],
        )
        best = trainer.hyperparameter_search(
            hp_space=common.hf_space(),
            compute_objective=lambda metrics: metrics["eval_accuracy"],
            n_trials=s["n_trials"],
            direction="maximize",
            backend="optuna",
            sampler=optuna.samplers.TPESampler(seed=0),
            pruner=optuna.pruners.MedianPruner(),
        )
        # transformers returns no study; a trial that stopped before max_steps was pruned.
        states = ["COMPLETE" if t["steps"] == s["steps"] else "PRUNED" for t in rec.trials]
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
        "peak RSS MiB": common.peak_rss_mib(),
        "trials": rec.trials,
        "params": params,
        "data": task.source,
        "model": task.model_name,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    a = p.parse_args(argv)
    s = settings(a.quick, a.model)
    if a.side:
        common.write_side(a.side_out, side(a.side, s, a.data))
        return {}
    load_before = common.loadavg()
    results = common.run_both_sides(__file__, a)
    load_after = common.loadavg()
    rows = []
    for name, label in (("ours", "OptunaTrainer"), ("transformers", "Trainer.hyperparameter_search (optuna)")):
        rows.append({"side": label, **{c: results[name][c] for c in COLUMNS if c != "side"}})
    meta = {
        "command": common.command_line(),
        "model": results["ours"]["model"],
        "data": results["ours"]["data"],
        "settings": {**s, "space": common.SPACE, "sampler": "TPESampler(seed=0)", "pruner": "MedianPruner()"},
        "best params (ours)": results["ours"]["best params"],
        "best params (transformers)": results["transformers"]["best params"],
        "same values drawn in every trial": [t["values"] for t in results["ours"]["trials"]]
        == [t["values"] for t in results["transformers"]["trials"]],
        "per-trial accuracies (ours)": [t["accuracy"] for t in results["ours"]["trials"]],
        "per-trial accuracies (transformers)": [t["accuracy"] for t in results["transformers"]["trials"]],
        "loadavg before": load_before,
        "loadavg after": load_after,
    }
    common.write_table(
        a.out, NAME, "Head-to-head: the same search, OptunaTrainer vs Trainer.hyperparameter_search", COLUMNS, rows, meta
    )
    return {"rows": rows, "results": results}


if __name__ == "__main__":
    main()
