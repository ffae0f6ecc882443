"""Each trial's newest checkpoint, kept in the artifact store, so that a worker on another machine can resume it.

With `artifact_store` set, every checkpoint a trial saves (its `save_strategy`) is uploaded as an Optuna artifact of
the trial once `Trainer` has written it whole (`on_save` comes after the checkpoint's last file), and the trial's
`checkpoint_artifact` attribute names it (id, step, SHA-256, size). The checkpoint it supersedes is then removed from
the store: at most one per trial at any time, plus, for a moment, the new one.

The attribute travels with the trial: when a worker dies, Optuna's retry copies the trial with its user attributes,
so the copy knows the artifact, downloads it wherever it runs (search/resume.py) and continues from its step. When the
trial ends (complete, pruned or failed; not interrupted), its checkpoint leaves the store: the best model has its own
artifact (output/best_model.py).

An upload that fails ends the trial as FAIL, with the store's error as its `fail_reason`; the search goes on. Under
DDP the main process uploads and every process learns the outcome at the same step (`decide`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import optuna
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from optuna_trainer.exceptions import ArtifactUploadError
from optuna_trainer.study import attrs
from optuna_trainer.study.artifacts import OpenedArtifactStore, remove_artifact, upload_folder

logger = logging.getLogger(__name__)


def _same(outcome: Any) -> Any:
    return outcome


class CheckpointUploadCallback(TrainerCallback):
    """Upload each checkpoint of one trial to the artifact store, removing the one it supersedes.

    Args:
        trial: the trial on the main process (an `optuna.Trial`, or `SyncTrial` whose `delegate` is one), None on the
            others.
        store: the opened artifact store.
        current: the artifact the trial holds already (a retried trial's, inherited from the trial it retries).
        decide: shares the main process's outcome (None or the upload's error) with every process.
    """

    def __init__(
        self,
        trial: optuna.trial.BaseTrial | None,
        store: OpenedArtifactStore,
        current: dict[str, Any] | None = None,
        decide: Callable[[Any], Any] = _same,
    ) -> None:
        self.trial = trial
        self.store = store
        self.current = current
        self.decide = decide
        self.uploaded: list[int] = []  # the steps uploaded (the tests read it)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        outcome: BaseException | None = None
        if self.trial is not None and state.is_world_process_zero:
            folder = os.path.join(args.output_dir or "", f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            try:
                if os.path.isdir(folder):
                    self._upload(folder, state.global_step)
            except Exception as err:  # noqa: BLE001 - the trial fails with it on every process, below
                outcome = ArtifactUploadError(
                    f"artifact_store: uploading {folder} to {self.store.description} failed: {type(err).__name__}: "
                    f"{err}"
                )
        outcome = self.decide(outcome)
        if isinstance(outcome, BaseException):
            raise outcome

    def _upload(self, folder: str, step: int) -> None:
        assert self.trial is not None
        target = getattr(self.trial, "delegate", self.trial)  # SyncTrial on rank 0 wraps the study's trial
        if not isinstance(target, optuna.trial.Trial):
            raise TypeError(f"an artifact belongs to a trial of a study, got {type(target).__name__}")
        record = upload_folder(self.store, folder, target)
        new = {**record, "step": step}
        attrs.write(self.trial, checkpoint_artifact=new)
        previous, self.current = self.current, new
        self.uploaded.append(step)
        if previous is not None and previous.get("artifact_id") != new["artifact_id"]:
            remove_artifact(self.store, previous["artifact_id"])
        logger.debug(f"Trial {self.trial.number}: checkpoint at step {step} in {self.store.description}")

    def discard(self) -> None:
        """The trial is over: its checkpoint leaves the store (called on the main process, trial still running)."""
        if self.trial is None or self.current is None:
            return
        try:
            remove_artifact(self.store, self.current["artifact_id"])
        except Exception as err:  # noqa: BLE001 - a leftover in the store costs space, not correctness
            logger.warning(
                f"Trial {self.trial.number}: could not remove its checkpoint artifact {self.current['artifact_id']} "
                f"from {self.store.description} ({type(err).__name__}: {err}); remove it by hand"
            )
            return
        self.current = None
        attrs.write(self.trial, checkpoint_artifact=None)


__all__ = ["CheckpointUploadCallback"]
