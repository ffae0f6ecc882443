"""A deterministic stand-in for running out of memory, shared by tests/training/test_oom_constraint.py and
benchmarks/oom_constraint.py.

`MemoryBoundModel` raises `torch.OutOfMemoryError` in a training forward whose batch size x sequence length is above
its config's `memory_limit`, as a real model does on a device that holds that many tokens of activations. Its
evaluation loss is `1 / (trained batch size x seq_len)`: larger is better up to the limit, as in a real search where
the best batch sizes and sequence lengths sit next to the ones that run out of memory; so a sampler that does not
learn where the limit is keeps proposing configurations beyond it.

The space: `per_device_train_batch_size` in [1, 32] and `model.seq_len` in [8, 64], both uniform integers; with
`memory_limit=HALF_LIMIT` half of the space (by count of its points) runs out of memory.
"""

from __future__ import annotations

import os
from typing import Any

import optuna
import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import SequenceClassifierOutput

BATCH = (1, 32)
SEQ_LEN = (8, 64)
SPACE: dict[str, Any] = {
    "per_device_train_batch_size": {"type": "int", "low": BATCH[0], "high": BATCH[1]},
    "model.seq_len": {"type": "int", "low": SEQ_LEN[0], "high": SEQ_LEN[1]},
}
HALF_LIMIT = 480  # batch x seq_len above it runs out of memory: 49.6% of the space's points (`infeasible_share`)
N_STARTUP = 10  # TPESampler's default n_startup_trials


class MemoryBoundConfig(PretrainedConfig):
    """`seq_len` (the searched sequence length) and `memory_limit` (the largest batch x seq_len that fits)."""

    model_type = "memory_bound"

    def __init__(self, seq_len: int = 8, memory_limit: int = HALF_LIMIT, **kwargs: Any) -> None:
        self.seq_len = seq_len
        self.memory_limit = memory_limit
        super().__init__(**kwargs)


class MemoryBoundModel(nn.Module):
    """See the module docstring. One weight, so that the optimizer has something to step."""

    def __init__(self, config: MemoryBoundConfig) -> None:
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.zeros(1))
        self.register_buffer("trained_batch", torch.ones(()), persistent=False)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> SequenceClassifierOutput:
        batch = input_ids.shape[0]
        if self.training:
            tokens = batch * self.config.seq_len
            if tokens > self.config.memory_limit:
                raise torch.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate activations for {tokens} tokens "
                    f"(batch {batch} x seq_len {self.config.seq_len}; the device holds {self.config.memory_limit})"
                )
            self.trained_batch.fill_(batch)
        loss = self.weight.pow(2).sum() + 1.0 / (self.trained_batch * self.config.seq_len)
        return SequenceClassifierOutput(loss=loss, logits=torch.zeros(batch, 2) + self.weight)


def memory_bound_model(trial: Any = None) -> MemoryBoundModel:
    """The search's `model_init` (module level: it can be sent to a child process)."""
    return MemoryBoundModel(MemoryBoundConfig(memory_limit=int(os.environ.get("OOM_STANDIN_LIMIT", HALF_LIMIT))))


def infeasible(params: dict[str, Any], limit: int = HALF_LIMIT) -> bool:
    return int(params["per_device_train_batch_size"]) * int(params["model.seq_len"]) > limit


def infeasible_share(limit: int = HALF_LIMIT) -> float:
    """The share of the space's points that run out of memory."""
    points = [(b, s) for b in range(BATCH[0], BATCH[1] + 1) for s in range(SEQ_LEN[0], SEQ_LEN[1] + 1)]
    return sum(b * s > limit for b, s in points) / len(points)


def run_search(output_dir: str, oom_infeasible: bool, n_trials: int = 30, seed: int = 0) -> optuna.Study:
    """A TPE search (seed `seed`) of `n_trials` trials over SPACE with the stand-in; returns its study."""
    from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
    from tests.support import base_args, make_dataset

    args = OptunaTrainingArguments(
        **base_args(
            output_dir,
            hp_space=SPACE,
            sampler={"name": "tpe", "seed": seed, "multivariate": True},
            pruner="none",
            n_trials=n_trials,
            max_steps=1,
            eval_strategy="no",
            save_strategy="no",
            save_best_model=False,
            search_report=False,
            oom_infeasible=oom_infeasible,
        )
    )
    trainer = OptunaTrainer(
        model_init=memory_bound_model, args=args, train_dataset=make_dataset(64), eval_dataset=make_dataset(8, seed=1)
    )
    trainer.hyperparameter_search(show_progress_bar=False)
    assert trainer.study is not None
    return trainer.study


def after_startup(study: optuna.Study, n_trials: int = 30, limit: int = HALF_LIMIT) -> tuple[int, int]:
    """(trials numbered from N_STARTUP to n_trials - 1, how many of them fell in the infeasible region), counted by
    their parameters whatever their state: the first `n_trials` trials of either search (without the constraint, a
    FAIL trial does not count towards n_trials, so that search runs more)."""
    later = [t for t in study.trials if N_STARTUP <= t.number < n_trials and t.params]
    return len(later), sum(infeasible(t.params, limit) for t in later)
