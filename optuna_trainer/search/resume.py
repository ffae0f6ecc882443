"""Resume a trial whose worker was killed: same parameters (Optuna re-queues it), same run directory, last checkpoint.

When a worker dies (SIGKILL, a preempted machine, the OOM killer), its trial stops beating; the next worker that
counts the budget marks it FAIL and `RetryHeartbeatStaleTrialCallback` re-queues a copy as WAITING with the same
parameters, grid point and user attributes (its `run_dir`), and `failed_trial` = the original number in its system
attributes. This module finds, for such a copy, where the original trained and its last checkpoint, so that the copy
continues from that step instead of step 0. The evaluations the original reported up to that checkpoint are carried
over, so that the trial's value (its best evaluation) and the pruner see the whole curve.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field

import optuna
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from optuna_trainer.study.attrs import read

logger = logging.getLogger(__name__)


@dataclass
class ResumePoint:
    """Where a retried trial continues.

    Attributes:
        original: the number of the trial whose worker died (the first of the retry series).
        run_dir: the original's run directory.
        checkpoint: its last checkpoint, or None (then the trial starts from step 0).
        history: `(step, value)` the original reported to the pruner up to the checkpoint (its steps are training
            samples, see space/budget.py).
    """

    original: int
    run_dir: str | None
    checkpoint: str | None = None
    history: list[tuple[int, float]] = field(default_factory=list)

    @property
    def step(self) -> int:
        return checkpoint_step(self.checkpoint) if self.checkpoint else 0


def checkpoint_step(path: str) -> int:
    return int(os.path.basename(os.path.normpath(path)).rsplit("-", 1)[-1])


def find_resume_point(study: optuna.Study, number: int) -> ResumePoint | None:
    """The resume point of trial `number`, when it was re-queued after its worker died; None for any other trial."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    frozen = by_number[number]
    original = frozen.system_attrs.get("failed_trial")
    if original is None:
        return None
    retry_history: list[int] = frozen.system_attrs.get("retry_history", [original])
    run_dir = read(frozen).get("run_dir")
    point = ResumePoint(original=original, run_dir=run_dir)
    if run_dir is None or not os.path.isdir(run_dir):
        logger.info(
            f"Trial {number} retries trial {original} (its worker stopped), with the same parameters; its run "
            f"directory {run_dir!r} is not on this machine, so it starts from step 0"
        )
        return point
    point.checkpoint = last_complete_checkpoint(run_dir)
    if point.checkpoint is None:
        logger.info(f"Trial {number} retries trial {original} from step 0: no checkpoint in {run_dir}")
        return point
    # The latest attempt in the series wrote the checkpoint; it reported the evaluations up to it (attempts before
    # it carried their own over in the same way).
    last = retry_history[-1]
    reported = by_number.get(last)
    if reported is not None:
        # Reported at training samples seen (or optimizer steps with prune_budget="steps"): see space/budget.py.
        per_step = int(read(reported).get("budget_per_step", 1))
        point.history = sorted((s, v) for s, v in reported.intermediate_values.items() if s <= point.step * per_step)
    logger.info(
        f"Trial {number} retries trial {original} (its worker stopped) with the same parameters, resuming from "
        f"{point.checkpoint} (step {point.step})"
    )
    return point


def logged_evaluations(checkpoint: str) -> list[tuple[int, dict[str, float]]]:
    """`(step, metrics)` of every evaluation the checkpoint's `trainer_state.json` logged: the objective's history
    up to the checkpoint (what was reported to the pruner may be another metric, `prune_metric`)."""
    try:
        with open(os.path.join(checkpoint, TRAINER_STATE_NAME), encoding="utf-8") as f:
            history = json.load(f).get("log_history", [])
    except (OSError, ValueError):
        return []
    return [
        (int(entry.get("step", 0)), entry)
        for entry in history
        if isinstance(entry, dict) and any(str(k).startswith("eval_") for k in entry)
    ]


_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def last_complete_checkpoint(run_dir: str) -> str | None:
    """The newest checkpoint of `run_dir` that was written to the end, or None; incomplete ones are removed.

    `Trainer` writes a checkpoint's `trainer_state.json` last (after the weights, optimizer, scheduler and RNG
    states), so a checkpoint whose state file is missing or cut short was being written when its process was killed:
    resuming from it would crash (transformers' `get_last_checkpoint` takes it all the same). It is removed, so that
    neither this search nor transformers' checkpoint rotation takes it later, and the one before it is used.
    """
    steps = sorted(
        (int(m.group(1)), name)
        for name in os.listdir(run_dir)
        if (m := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(run_dir, name))
    )
    for _, name in reversed(steps):
        path = os.path.join(run_dir, name)
        try:
            with open(os.path.join(path, TRAINER_STATE_NAME), encoding="utf-8") as f:
                json.load(f)
            return path
        except (OSError, ValueError):
            logger.warning(
                f"{path} is incomplete (its {TRAINER_STATE_NAME} is missing or cut short: the process was killed "
                "while writing it); removed, resuming from the checkpoint before it"
            )
            shutil.rmtree(path, ignore_errors=True)
    return None
