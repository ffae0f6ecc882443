"""One search worker, run as a subprocess by the storage tests: `python -m tests.search_worker '<json>'`.

The JSON holds `OptunaTrainingArguments` overrides over `optuna_trainer.testing.base_args` (`hp_space` among them), and a `_test` entry
that steers this script:
    record: a file to which every `train()` call appends one JSON line (pid, run_dir, first step it trained);
    pause_run / pause_step / marker: in the run directory named `pause_run`, once the checkpoint of `pause_step` is
        saved, write `marker` and sleep, so that the test can kill this process in the middle of that trial;
    trial_sleep: seconds each trial sleeps before training (makes several workers' trials overlap).
At the end it prints one line `RESULT {"ran": ..., "finished": ...}`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from transformers import TrainerCallback

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from optuna_trainer.testing import base_args, compute_metrics, make_dataset, tiny_model


class _Steer(TrainerCallback):
    def __init__(self, test: dict[str, Any]) -> None:
        self.test = test
        self.first_step: int | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.first_step = None
        if self.test.get("trial_sleep"):
            time.sleep(self.test["trial_sleep"])

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.first_step is None:
            self.first_step = state.global_step
            if self.test.get("record"):
                line = {"pid": os.getpid(), "run_dir": args.output_dir, "first_step": state.global_step}
                with open(self.test["record"], "a", encoding="utf-8") as f:
                    f.write(json.dumps(line) + "\n")

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        marker = self.test.get("marker")
        if (
            marker
            and not os.path.exists(marker)
            and os.path.basename(args.output_dir) == self.test.get("pause_run")
            and state.global_step >= self.test.get("pause_step", 0)
        ):
            with open(marker, "w", encoding="utf-8") as f:
                f.write(str(state.global_step))
            time.sleep(600)  # the test kills this process here, in the middle of the trial


def main(spec: dict[str, Any]) -> None:
    test = spec.pop("_test", {})
    args = OptunaTrainingArguments(**base_args(spec.pop("output_dir"), **spec))
    trainer = OptunaTrainer(
        model_init=tiny_model,
        args=args,
        train_dataset=make_dataset(),
        eval_dataset=make_dataset(32, seed=1),
        compute_metrics=compute_metrics,
        callbacks=[_Steer(test)],
    )
    trainer.hyperparameter_search()
    study = trainer.study
    pid_trials = [t for t in study.trials if t.user_attrs.get("worker", "").endswith(f":{os.getpid()}")]
    finished = sum(t.state.is_finished() and t.state.name != "FAIL" for t in study.trials)
    print("RESULT " + json.dumps({"ran": len(pid_trials), "finished": finished}), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
