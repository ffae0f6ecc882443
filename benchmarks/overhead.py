"""Figure 1: the overhead of one trial through `OptunaTrainer` over `Trainer.train()` with the same arguments and seed.

Both sides build the model with the same `model_init`, train the same steps and evaluate once at the end (eval_steps =
max_steps); ours runs that as a one-trial study over a one-point space (`learning_rate` categorical with one choice,
pruner none, in-memory storage, no best-model save). The runs alternate in one process (ours, plain, ours, plain,
...) after one warm-up run of each, and the ratio is the median of the per-pair ratios. The final training loss of
both must be equal: identical is the aim, the table states the largest difference seen.

    python benchmarks/overhead.py            # default: MiniLM-L6, SST-2 subset, 32 steps, 7 pairs
    python benchmarks/overhead.py --quick    # CI: tiny BERT from a config, 4 steps, 2 pairs
    python benchmarks/overhead.py --no-report --best-model   # best_model/ kept at the best of 4 evaluations
"""

from __future__ import annotations

import os
import statistics
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

NAME = "overhead"
COLUMNS = ["side", "model", "steps", "median seconds", "final training loss", "eval accuracy"]
TARGET = 1.03
BEST_MODEL_DISK: list[int] = []


def run_plain(task: tasks.Task, settings: dict[str, Any], out: str, save: bool = False) -> tuple[float, float, float]:
    from transformers import Trainer, TrainingArguments

    start = time.perf_counter()
    trainer = Trainer(
        model_init=task.model_init,
        args=TrainingArguments(**tasks.train_args(out, **settings)),
        train_dataset=task.train,
        eval_dataset=task.dev,
        compute_metrics=tasks.compute_metrics,
        data_collator=task.collator,
    )
    result = trainer.train()
    if save:  # what a user of Trainer does to keep the model, as ours writes best_model/
        trainer.save_model(os.path.join(out, "model"))
    seconds = time.perf_counter() - start
    accuracy = [h["eval_accuracy"] for h in trainer.state.log_history if "eval_accuracy" in h][-1]
    return seconds, result.training_loss, accuracy


def run_ours(
    task: tasks.Task, settings: dict[str, Any], out: str, report: bool = True, best_model: bool = False
) -> tuple[float, float, float]:
    from optuna_trainer import OptunaTrainer, OptunaTrainingArguments

    lr = settings["learning_rate"]
    start = time.perf_counter()
    args = OptunaTrainingArguments(
        **tasks.train_args(out, **settings),
        hp_space={"learning_rate": {"type": "categorical", "choices": [lr]}},
        n_trials=1,
        sampler={"name": "tpe", "seed": 0},
        pruner="none",
        storage="memory",
        save_best_model=best_model,
        search_report=report,  # the end-of-search report (plots) is a cost per search, not per trial
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
    seconds = time.perf_counter() - start
    trial = trainer.study.trials[0]
    assert trial.params == {"learning_rate": lr}, trial.params
    if best_model:
        BEST_MODEL_DISK.append(measure.folder_bytes(os.path.join(out, "best_model")))
    loss = [h["train_loss"] for h in trainer.state.log_history if "train_loss" in h][-1]
    return seconds, loss, trial.value


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = sides.parser(__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=None, help="interleaved (ours, plain) pairs after the warm-up")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--no-report", action="store_true", help="ours without the end-of-search report (per-trial cost)")
    p.add_argument(
        "--best-model",
        action="store_true",
        help="both sides evaluate 4 times; ours keeps the best evaluation's weights and writes best_model/, "
        "Trainer.train() saves its final model",
    )
    a = p.parse_args(argv)
    sides.quiet()
    model = a.model or ("tiny-bert" if a.quick else "minilm")
    pairs = a.pairs or (2 if a.quick else 7)
    steps = a.steps or (4 if a.quick else 32)
    n_train, n_dev = (64, 64) if a.quick else (512, 256)
    task = tasks.make_task(model, a.data, n_train, n_dev)
    settings = dict(
        max_steps=steps,
        per_device_train_batch_size=16,
        learning_rate=5e-5 if model == "minilm" else 1e-3,
        eval_strategy="steps",
        eval_steps=steps // 4 if a.best_model else steps,
        warmup_steps=0,
    )
    load_before = measure.loadavg()
    times: dict[str, list[float]] = {"ours": [], "plain": []}
    losses: dict[str, list[float]] = {"ours": [], "plain": []}
    accuracy: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(pairs + 1):  # pair 0 is the warm-up
            for side in ("ours", "plain"):
                out = os.path.join(tmp, f"{side}-{i}")
                if side == "ours":
                    seconds, loss, acc = run_ours(task, settings, out, not a.no_report, a.best_model)
                else:
                    seconds, loss, acc = run_plain(task, settings, out, save=a.best_model)
                losses[side].append(loss)
                accuracy[side] = acc
                if i > 0:
                    times[side].append(seconds)
    load_after = measure.loadavg()
    ratios = [o / p_ for o, p_ in zip(times["ours"], times["plain"], strict=True)]
    ratio = statistics.median(ratios)
    loss_diff = max(abs(o - p_) for o, p_ in zip(losses["ours"], losses["plain"], strict=True))
    rows = [
        {
            "side": "OptunaTrainer.hyperparameter_search (1 trial)",
            "model": task.model_name,
            "steps": steps,
            "median seconds": statistics.median(times["ours"]),
            "final training loss": losses["ours"][-1],
            "eval accuracy": accuracy["ours"],
        },
        {
            "side": "Trainer.train",
            "model": task.model_name,
            "steps": steps,
            "median seconds": statistics.median(times["plain"]),
            "final training loss": losses["plain"][-1],
            "eval accuracy": accuracy["plain"],
        },
    ]
    summary = {
        "ratio (median of pair ratios)": round(ratio, 4),
        "pair ratios": [round(r, 4) for r in ratios],
        "max |loss ours - loss plain| over all runs": loss_diff,
        "target": f"ratio <= {TARGET}",
        "target met": ratio <= TARGET,
        "losses identical": loss_diff == 0.0,
    }
    if a.best_model:
        # best_model/ is written beside the previous one and swapped in: at peak the disk holds two copies; the
        # best evaluation's weights are kept in memory (a CPU copy of the trainable tensors), not on disk.
        summary["best_model/ bytes"] = max(BEST_MODEL_DISK)
        summary["disk at peak (bytes, during the swap)"] = 2 * max(BEST_MODEL_DISK)
    meta = {
        "command": tables.command_line(),
        "data": task.source,
        "settings": {
            **settings,
            "pairs": pairs,
            "warm-up pairs": 1,
            "torch threads": None,
            "search_report": not a.no_report,
        },
        "loadavg before": load_before,
        "loadavg after": load_after,
        **summary,
    }
    import torch

    meta["settings"]["torch threads"] = torch.get_num_threads()
    name = NAME + "_no_report" if a.no_report else NAME  # both tables are kept side by side under results/
    name += "_best_model" if a.best_model else ""
    tables.write_table(a.out, name, "Overhead of one trial over Trainer.train()", COLUMNS, rows, meta)
    return {"rows": rows, **summary}


if __name__ == "__main__":
    main()
