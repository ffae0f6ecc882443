"""A search under a real 2-process group whose best model is checked (not a test itself; see
tests/processes/distributed/test_distributed_best_model.py).

Every rank spoils the classifier at each trial's last step (the same on both, so the replicas stay equal), so that
each trial's last evaluation is its worst. Every rank records the sha256 of the weights it holds at every evaluation
(`<out>/hashes<r>.json`, per run directory and step), so the test can check that `best_model/` is the best
evaluation's weights, gathered, and not the last step's. With an artifact store: checkpoints at steps 4 and 8.

    accelerate launch --multi_gpu --num_processes 2 tests/processes/distributed/best_model_script.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments  # noqa: E402
from tests.support import base_args, compute_metrics, make_dataset, tiny_model, weights_hash  # noqa: E402


class SpoilAndRecord(TrainerCallback):
    def __init__(self) -> None:
        self.hashes: dict[str, dict[int, str]] = {}

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step == state.max_steps:
            with torch.no_grad():
                model.classifier.weight.mul_(50.0)
                model.classifier.bias.add_(torch.tensor([5.0, -5.0]))

    def on_evaluate(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.hashes.setdefault(args.output_dir, {})[state.global_step] = weights_hash(model)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    cli = parser.parse_args()
    args = OptunaTrainingArguments(
        **base_args(
            cli.out,
            objective_metric="loss",
            direction="minimize",
            n_trials=2,
            pruner="none",
            eval_steps=1,
            sampler={"name": "random", "seed": 0},
            storage="sqlite:///" + os.path.join(cli.out, "study.db"),
            # Under DDP the main process uploads each checkpoint and the best model; every rank learns the outcome.
            artifact_store=os.path.join(cli.out, "store"),
            save_strategy="steps",
            save_steps=4,
            hp_space={"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        )
    )
    recorder = SpoilAndRecord()
    trainer = OptunaTrainer(
        model_init=tiny_model,
        args=args,
        train_dataset=make_dataset(64, seed=0),
        eval_dataset=make_dataset(32, seed=1),
        compute_metrics=compute_metrics,
        callbacks=[recorder],
    )
    best = trainer.hyperparameter_search()
    rank = args.process_index
    with open(os.path.join(cli.out, f"hashes{rank}.json"), "w", encoding="utf-8") as f:
        json.dump({"hashes": recorder.hashes, "best": [best.run_id, best.objective]}, f)


if __name__ == "__main__":
    main()
