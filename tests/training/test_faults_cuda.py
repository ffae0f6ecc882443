"""A real CUDA out-of-memory error in one trial: the trial FAILs, its device memory is back before the next trial.

Needs a CUDA device (skipped otherwise). The CPU tests in test_faults.py raise the error by hand; this one lets the
allocator fail for real while the trial holds a large activation-like tensor in its frames.
"""

from __future__ import annotations

import gc

import optuna
import pytest
import torch
from transformers import BertForSequenceClassification

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from tests.support import base_args, compute_metrics, make_dataset, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

HOLD_BYTES = 2 * 1024**3  # what the failing trial holds when it runs out of memory


class Greedy(BertForSequenceClassification):
    """With `config.greedy`, its third training forward holds 2 GiB and then asks for more than the device has."""

    def __init__(self, config):
        super().__init__(config)
        self.calls = 0

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        if self.training and self.config.greedy:
            self.calls += 1
            if self.calls == 3:
                held = torch.empty(HOLD_BYTES, dtype=torch.uint8, device=out.loss.device)  # noqa: F841 (in the frame)
                total = torch.cuda.get_device_properties(out.loss.device).total_memory
                torch.empty(2 * total, dtype=torch.uint8, device=out.loss.device)  # raises torch.OutOfMemoryError
        return out


def test_real_cuda_oom_fails_one_trial_and_frees_its_memory(tmp_path) -> None:
    after_fail: list[int] = []
    baseline: list[int] = []

    def model_init(trial=None):
        baseline.append(torch.cuda.memory_allocated())
        return Greedy(tiny_config(greedy=False))

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.FAIL:
            after_fail.append(torch.cuda.memory_allocated())

    args = OptunaTrainingArguments(
        **base_args(
            tmp_path / "out",
            use_cpu=False,
            max_steps=4,
            hp_space={"model.greedy": {"type": "categorical", "choices": [True, False]}},
            sampler={"name": "grid", "seed": 0},
            pruner="none",
            n_trials=2,
            oom_infeasible=False,  # FAIL, as this test reads (the default, PRUNED + constraint: test_oom_constraint.py)
        )
    )
    trainer = OptunaTrainer(
        model_init=model_init,
        args=args,
        train_dataset=make_dataset(64),
        eval_dataset=make_dataset(32, seed=1),
        compute_metrics=compute_metrics,
    )
    gc.disable()
    try:
        trainer.hyperparameter_search(gc_after_trial=False, callbacks=[after_trial])
    finally:
        gc.enable()
    by_value = {t.params["model.greedy"]: t for t in trainer.study.trials}
    assert by_value[True].state == optuna.trial.TrialState.FAIL
    assert by_value[True].user_attrs["fault"] == "out_of_memory"
    assert "out of memory" in by_value[True].user_attrs["fail_reason"].lower()
    assert by_value[False].state == optuna.trial.TrialState.COMPLETE
    # The failed trial's 2 GiB (and its model) are gone by the time the study moves on.
    assert len(after_fail) == 1
    assert after_fail[0] < min(baseline) + HOLD_BYTES // 4, (after_fail, baseline)
