"""The weights of a trial's best evaluation, kept while the trial trains, so that `best_model/` holds them.

A trial's value is its best evaluation (space/objective.py), which is seldom its last step: a learning rate that
overshoots late, or a run that starts to overfit, ends below its best. Saving the model as it is when training ends
would hand back weights that re-evaluate to less than the value the study records. transformers keeps a best checkpoint
for the same reason (`save_strategy="best"`, a checkpoint written when an evaluation beats the best); here the weights
are copied to the CPU instead, because a copy of what training changes (the parameters that require a gradient, and
every buffer; for a PEFT adapter only the adapter and its fully trained modules) costs less than a save and no disk
(docs/benchmarks.md figure 1), and the checkpoints a user asked for stay exactly the ones `save_strategy` writes.

Every process keeps its own copy (under DDP each holds the full replica and judges the same metrics, so all keep the
same step), and every process puts it back before `save_model` gathers the weights.

Where each process holds only a shard of the weights (DeepSpeed ZeRO-3, FSDP), a copy of the local tensors could not
be gathered again later; there the best evaluation is written with `save_model` instead (which gathers the shards,
on every process) to `best-evaluation/` in the trial's run directory, as transformers' `save_strategy="best"` does,
and that folder becomes `best_model/` (`on_disk`).

A trial resumed from a checkpoint holds, of the evaluations before the checkpoint, only the weights of the
checkpoint's own step: an earlier evaluation that was better cannot be handed back, so it does not count towards the
trial's value (`unbacked`; the trial says so in the log).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from optuna_trainer.space.objective import Objective
from optuna_trainer.study.bookkeeping import is_better

logger = logging.getLogger(__name__)

BEST_EVALUATION_DIR = "best-evaluation"  # in a trial's run directory, where the weights are kept on disk


def shards_weights(trainer: Trainer) -> bool:
    """Whether each process holds only a shard of the weights (DeepSpeed ZeRO-3 or FSDP): then the best evaluation
    is kept on disk, gathered by `save_model`, instead of as a copy of the local tensors."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    if getattr(trainer, "is_deepspeed_enabled", False):
        plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
        return getattr(plugin, "zero_stage", None) == 3
    return False


@dataclass(frozen=True)
class BestEvaluation:
    """The trial's best evaluation whose weights are held: its optimizer step and objective value."""

    step: int
    value: float


def changeable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What training can change: the parameters that require a gradient, and every buffer (running statistics)."""
    tensors: dict[str, torch.Tensor] = {name: p for name, p in model.named_parameters() if p.requires_grad}
    tensors.update(dict(model.named_buffers()))
    return tensors


class BestWeightsCallback(TrainerCallback):
    """Keeps a CPU copy of the trial model's weights at its best evaluation so far.

    Added after the pruning callback, whose `on_evaluate` records the evaluation's objective value first.

    Args:
        objective: the trial's objective (its `history` is what the evaluations recorded).
        model: returns the model the trial trains.
        save_to: with sharded weights, where to keep the best evaluation (`<run_dir>/best-evaluation`), and
        save: the trainer's `save_model`, called on every process to write it there.
    """

    def __init__(
        self,
        objective: Objective,
        model: Callable[[], torch.nn.Module | None],
        save_to: str | None = None,
        save: Callable[[str], None] | None = None,
    ) -> None:
        self.objective = objective
        self.model = model
        self.save_to = save_to if save is not None else None
        self.save = save
        self.direction = objective.directions[0]
        self.held: BestEvaluation | None = None
        self.unbacked: list[tuple[int, float]] = []  # evaluations before a resume point whose weights are gone
        self._tensors: dict[str, torch.Tensor] | None = None
        self._seen = 0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # A resumed trial: the history already holds the evaluations up to its checkpoint, and the model now holds
        # the checkpoint's weights, so only an evaluation at the checkpoint's own step can be kept.
        for step, value in self._new_evaluations():
            if step == state.global_step:
                self._offer(step, value)
            else:
                self.unbacked.append((step, value))

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        for step, value in self._new_evaluations():
            self._offer(step, value)

    def _new_evaluations(self) -> list[tuple[int, float]]:
        history = self.objective.history[self._seen :]
        self._seen = len(self.objective.history)
        return [(s, v) for s, v in history if isinstance(v, float) and math.isfinite(v)]

    def _offer(self, step: int, value: float) -> None:
        # Strictly better: of equal values the first is kept, as `Objective.best` (max/min) returns the first.
        if not is_better(value, self.value(), self.direction):
            return
        model = self.model()
        if model is None:
            return
        if self.save_to is not None and self.save is not None:
            # Gathered by save_model on every process; the previous best evaluation's folder is replaced whole.
            shutil.rmtree(self.save_to, ignore_errors=True)
            self.save(self.save_to)
            self.held = BestEvaluation(step, value)
            return
        with torch.no_grad():
            tensors = changeable_tensors(model)
            if self._tensors is None or self._tensors.keys() != tensors.keys():
                self._tensors = {name: t.detach().to("cpu", copy=True) for name, t in tensors.items()}
            else:
                for name, t in tensors.items():
                    self._tensors[name].copy_(t.detach())
        self.held = BestEvaluation(step, value)

    def value(self) -> float | None:
        """The trial's value: the best evaluation whose weights are held (None when none is)."""
        return self.held.value if self.held is not None else None

    def best_unbacked(self) -> tuple[int, float] | None:
        """The best evaluation before a resume point that beats the held one, if any (it cannot be handed back)."""
        best: tuple[int, float] | None = None
        for step, value in self.unbacked:  # once set, `best` beats the held value: compare with it alone
            if is_better(value, best[1] if best is not None else self.value(), self.direction):
                best = (step, value)
        return best

    @property
    def on_disk(self) -> str | None:
        """The folder that holds the best evaluation, written by `save_model`, when kept on disk (sharded weights)."""
        return self.save_to if self.save_to is not None and self.held is not None else None

    def restore(self) -> None:
        """Put the best evaluation's weights back into the trial's model (on every process, before saving it)."""
        model = self.model()
        if self._tensors is None or model is None:
            return
        # By name over every parameter and buffer: `requires_grad` flags may have changed since the copy was taken.
        current: dict[str, torch.Tensor] = dict(model.named_parameters())
        current.update(dict(model.named_buffers()))
        with torch.no_grad():
            for name, saved in self._tensors.items():
                current[name].copy_(saved)

    def release(self) -> None:
        """Free the copy (the trial is over); a folder on disk not taken as `best_model/` goes too."""
        self._tensors = None
        if self.save_to is not None and os.path.isdir(self.save_to):
            shutil.rmtree(self.save_to, ignore_errors=True)


__all__ = ["BEST_EVALUATION_DIR", "BestEvaluation", "BestWeightsCallback", "changeable_tensors", "shards_weights"]
