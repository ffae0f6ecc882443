"""One search worker, run as a subprocess by the storage tests: `python -m tests.support_worker '<json>'`.

The JSON holds `OptunaTrainingArguments` overrides over `tests.support.base_args` (`hp_space` among them), and a `_test` entry
that steers this script:
    record: a file to which every `train()` call appends one JSON line (pid, run_dir, first step it trained);
    pause_run / pause_step / marker: in the run directory named `pause_run`, once the checkpoint of `pause_step` is
        saved, write `marker` and sleep, so that the test can kill this process in the middle of that trial;
    trial_sleep: seconds each trial sleeps before training (makes several workers' trials overlap);
    step_sleep: seconds each step sleeps (a trial long enough for a test to signal the search in its middle);
    every_trial_best: each trial scores higher than the one before (each becomes the best model);
    best_saves / pause_best_save: append the sha256 of each best model's weights (and the run it came from) to the
        file `best_saves`; at the save numbered `pause_best_save` (from 1), once the weights are written beside
        best_model/ and before they replace it, write `marker` and sleep (the test kills the worker there).
At the end it prints one line `RESULT {"ran": ..., "finished": ...}`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from typing import Any

from transformers import TrainerCallback

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from tests.support import base_args, compute_metrics, make_dataset, tiny_model


class _Steer(TrainerCallback):
    def __init__(self, test: dict[str, Any]) -> None:
        self.test = test
        self.first_step: int | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.first_step = None
        if self.test.get("trial_sleep"):
            time.sleep(self.test["trial_sleep"])

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.test.get("step_sleep"):
            time.sleep(self.test["step_sleep"])
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


class _SteeredTrainer(OptunaTrainer):
    """Records (and may pause in) the saves of the best model."""

    test: dict[str, Any] = {}
    best_saves = 0

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call=_internal_call)
        if output_dir is None or not output_dir.endswith(".incoming") or not self.test.get("best_saves"):
            return
        type(self).best_saves += 1
        with open(os.path.join(output_dir, "model.safetensors"), "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        with open(self.test["best_saves"], "a", encoding="utf-8") as f:
            f.write(json.dumps({"sha256": digest, "run_dir": self.args.output_dir}) + "\n")
        if self.best_saves == self.test.get("pause_best_save"):
            with open(self.test["marker"], "w", encoding="utf-8") as f:
                f.write(digest)
            time.sleep(600)  # the test kills this process here, between the weights and the swap


def main(spec: dict[str, Any]) -> None:
    test = spec.pop("_test", {})
    args = OptunaTrainingArguments(**base_args(spec.pop("output_dir"), **spec))
    _SteeredTrainer.test = test
    trainer = _SteeredTrainer(
        model_init=tiny_model,
        args=args,
        train_dataset=make_dataset(),
        eval_dataset=make_dataset(32, seed=1),
        compute_metrics=compute_metrics,
        callbacks=[_Steer(test)],
    )
    if test.get("every_trial_best"):
        # The trial's number (from its run directory) as its value, maximized: each trial is the new best.
        trainer.hyperparameter_search(
            compute_objective=lambda metrics: float(trainer.args.output_dir.rsplit("-", 1)[-1]), direction="maximize"
        )
    else:
        trainer.hyperparameter_search()
    study = trainer.study
    pid_trials = [t for t in study.trials if t.user_attrs.get("worker", "").endswith(f":{os.getpid()}")]
    finished = sum(t.state.is_finished() and t.state.name != "FAIL" for t in study.trials)
    print("RESULT " + json.dumps({"ran": len(pid_trials), "finished": finished}), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
