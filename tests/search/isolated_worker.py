"""An isolated search run as a subprocess by tests/search/test_isolated.py, its log written to a file (no terminal):
`python -m tests.search.isolated_worker OUTPUT_DIR N_TRIALS [STEP_SLEEP_S]`."""

from __future__ import annotations

import sys
import time
from typing import Any

from transformers import TrainerCallback

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from tests.support import base_args, compute_metrics, make_dataset, tiny_model


class SlowSteps(TrainerCallback):
    """Each step sleeps `seconds`: a trial long enough for a test to signal the search in its middle."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        time.sleep(self.seconds)


def main(out: str, n_trials: int, step_sleep: float) -> None:
    args = OptunaTrainingArguments(
        **base_args(
            out,
            isolate_trials=True,
            n_trials=n_trials,
            max_steps=8,
            disable_tqdm=False,  # in a file: no bars, one line per trial start and end
            logging_strategy="no",
            storage=f"sqlite:///{out}/study.db",
            sampler={"name": "random", "seed": 0},
            hp_space={"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        )
    )
    trainer = OptunaTrainer(
        model_init=tiny_model,
        args=args,
        train_dataset=make_dataset(),
        eval_dataset=make_dataset(32, seed=1),
        compute_metrics=compute_metrics,
        callbacks=[SlowSteps(step_sleep)],
    )
    trainer.hyperparameter_search()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
