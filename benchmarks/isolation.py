"""Figure 13: isolated trials (`isolate_trials=True`) against in-process trials: the per-trial cost of a fresh process
(its start, the imports, the trainer and model built again) and the search process's memory at trial 20.

Figure 1's task (SST-2 512 train / 256 dev sentences, MiniLM-L6 + classification head, batch 16, 32 steps, one
evaluation at the last step, `search_report=False`, `save_best_model=False`, in-memory storage) searched over
figure 1's learning rate and weight decay with TPE (seed 0), once in-process and once isolated, each side in a fresh
interpreter. Per trial: its wall time as the study records it (`datetime_complete - datetime_start`, in the search
process: for an isolated trial that includes the child's start). Memory: the search process's RSS after each trial
(benchmarks/measure.py); an isolated trial's own memory goes with its process.

    python benchmarks/isolation.py                       # MiniLM, 20 trials per side
    python benchmarks/isolation.py --model tiny-bert     # a 1-layer BERT from a config: the process cost alone
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

sys.path[:0] = [
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
]
import measure  # noqa: E402
import tasks  # noqa: E402


class ModelInit:
    """A picklable `model_init` for figure 1's models (tasks.make_task's are closures, which a child cannot get)."""

    def __init__(self, model: str, vocab_size: int) -> None:
        self.model, self.vocab_size = model, vocab_size

    def __call__(self, trial: Any = None) -> Any:
        from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

        if self.model == "minilm":
            return AutoModelForSequenceClassification.from_pretrained(tasks.minilm_path(), num_labels=2)
        config = BertConfig(
            vocab_size=self.vocab_size,
            max_position_embeddings=tasks.MAX_SEQ_LENGTH + 2,
            num_labels=2,
            **tasks.BERT_SIZES[self.model],
        )
        return BertForSequenceClassification(config)


def run_side(isolated: bool, model: str, n_trials: int, data_dir: str) -> dict[str, Any]:
    import optuna

    from optuna_trainer import OptunaTrainer, OptunaTrainingArguments

    task = tasks.make_task(model, data_dir, 512, 256)
    rss: list[float] = []

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        rss.append(measure.current_rss_mib())

    with tempfile.TemporaryDirectory() as out:
        args = OptunaTrainingArguments(
            **tasks.train_args(
                out, max_steps=32, per_device_train_batch_size=16, eval_strategy="steps", eval_steps=32
            ),
            hp_space=tasks.SPACE,
            n_trials=n_trials,
            sampler={"name": "tpe", "seed": 0},
            pruner="none",
            storage="memory",
            objective_metric="accuracy",
            save_best_model=False,
            search_report=False,
            isolate_trials=isolated,
        )
        trainer = OptunaTrainer(
            model_init=ModelInit(model, task.collator.tokenizer.vocab_size),
            args=args,
            train_dataset=task.train,
            eval_dataset=task.dev,
            compute_metrics=tasks.compute_metrics,
            data_collator=task.collator,
        )
        trainer.hyperparameter_search(show_progress_bar=False, callbacks=[after_trial])
        assert trainer.study is not None
        seconds = [
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in trainer.study.trials
            if t.datetime_complete is not None and t.datetime_start is not None
        ]
    return {
        "isolated": isolated,
        "trials": len(seconds),
        "median_trial_s": statistics.median(seconds),
        "first_trial_s": seconds[0],
        "rss_mib_after_trial": [round(r, 1) for r in rss],
        "data": task.source,
        "model": task.model_name,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", choices=["minilm", "small-bert", "tiny-bert"])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--data-dir", default=tasks.DEFAULT_DATA)
    parser.add_argument("--side", choices=["in-process", "isolated"], help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.side is not None:
        result = run_side(options.side == "isolated", options.model, options.trials, options.data_dir)
        print("RESULT " + json.dumps(result), flush=True)
        return
    print(f"load before: {measure.loadavg()}")
    results = {}
    for side in ("in-process", "isolated"):
        command = [sys.executable, os.path.abspath(__file__), "--side", side, "--model", options.model]
        command += ["--trials", str(options.trials), "--data-dir", options.data_dir]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[side] = json.loads(output.split("RESULT ", 1)[1])
        print(f"{side}: {json.dumps(results[side])}", flush=True)
    print(f"load after: {measure.loadavg()}")
    base, iso = results["in-process"], results["isolated"]
    print(f"model: {base['model']}; data: {base['data']}; {options.trials} trials per side")
    print("| side | median seconds per trial | first trial | RSS after trial 2 (MiB) | RSS after last trial (MiB) |")
    print("|---|---|---|---|---|")
    for side, r in results.items():
        rss = r["rss_mib_after_trial"]
        print(f"| {side} | {r['median_trial_s']:.2f} | {r['first_trial_s']:.2f} | {rss[1]} | {rss[-1]} |")
    print(f"per-trial overhead of isolation (median): {iso['median_trial_s'] - base['median_trial_s']:.2f} s")
    print("RSS after each trial, in-process:", base["rss_mib_after_trial"])
    print("RSS after each trial, isolated:", iso["rss_mib_after_trial"])


if __name__ == "__main__":
    main()
