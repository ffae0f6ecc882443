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
from typing import Any

import optuna
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from optuna_trainer.study.artifacts import OpenedArtifactStore, download_folder
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


def find_resume_point(
    study: optuna.Study,
    number: int,
    artifacts: OpenedArtifactStore | None = None,
    local_run_dir: str | None = None,
) -> ResumePoint | None:
    """The resume point of trial `number`, when it was re-queued after its worker died; None for any other trial.

    The checkpoint is the newest complete one of the original's run directory when this machine has it, else (with
    an artifact store) the one the trial's `checkpoint_artifact` names, downloaded into `local_run_dir` (this
    machine's run directory for the trial); the newer of the two when both exist.
    """
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    frozen = by_number[number]
    original = frozen.system_attrs.get("failed_trial")
    if original is None:
        return None
    retry_history: list[int] = frozen.system_attrs.get("retry_history", [original])
    recorded = read(frozen)
    run_dir = recorded.get("run_dir")
    point = ResumePoint(original=original, run_dir=run_dir)
    local = last_complete_checkpoint(run_dir) if run_dir is not None and os.path.isdir(run_dir) else None
    # The retry copy carries the user attributes of the attempt it copies: the newest checkpoint uploaded in the series.
    stored = recorded.get("checkpoint_artifact") if artifacts is not None else None
    if stored is not None and (local is None or checkpoint_step(local) < int(stored["step"])):
        assert artifacts is not None
        downloaded = _download(artifacts, stored, local_run_dir or run_dir, number)
        if downloaded is not None:
            local, point.run_dir = downloaded, os.path.dirname(downloaded)
    if local is None:
        where = (
            f"no checkpoint in {run_dir}"
            if run_dir is not None and os.path.isdir(run_dir)
            else f"its run directory {run_dir!r} is not on this machine"
            + ("" if artifacts is None else " and the artifact store holds no checkpoint of it")
        )
        logger.info(
            f"Trial {number} retries trial {original} (its worker stopped) with the same parameters; {where}, so it "
            "starts from step 0"
        )
        return point
    point.checkpoint = local
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


def _download(artifacts: OpenedArtifactStore, stored: dict[str, Any], run_dir: str | None, number: int) -> str | None:
    """The stored checkpoint unpacked into `run_dir`, or None (with a warning: the trial then starts over, which
    costs time but hands back nothing it did not measure)."""
    if run_dir is None:
        return None
    dest = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{int(stored['step'])}")
    shutil.rmtree(dest, ignore_errors=True)  # a leftover of this name is not the stored checkpoint
    try:
        download_folder(artifacts, stored, dest)
    except Exception as err:  # noqa: BLE001 - any failure: start over rather than resume from something unchecked
        logger.warning(
            f"Trial {number}: could not take its checkpoint (step {stored['step']}) from {artifacts.description} "
            f"({type(err).__name__}: {err}); it starts from step 0"
        )
        return None
    logger.info(f"Trial {number}: checkpoint of step {stored['step']} downloaded from {artifacts.description}")
    return dest


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
