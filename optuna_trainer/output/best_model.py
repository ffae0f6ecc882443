"""`output_dir/best_model/`: the best trial's model with its `trial.json`, replaced whole or not at all.

A new best is written beside the current one (`best_model.incoming/`: weights, config, tokenizer, then `trial.json`),
then swapped in by two renames (the current one to `best_model.outgoing/`, the new one to `best_model/`). A kill at any
point leaves either the old or the new best complete, with its own `trial.json`: before the first rename
`best_model/` is untouched, and between the two renames `recover()` (run before every save and at every search start)
puts `best_model.outgoing/` back. Leftovers of an interrupted save are removed there too. A save that fails (a full
disk) removes its own `best_model.incoming/` before the error goes on.

Workers sharing `output_dir` write, and clean up, under one file lock (`best_model_lock`): a worker that starts (or
restarts) while another is in the middle of a save must not take that save's `best_model.incoming/` for a leftover.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from typing import Any

import filelock
import optuna
from transformers import Trainer

from optuna_trainer.study.artifacts import OpenedArtifactStore, download_folder, remove_artifact, upload_folder
from optuna_trainer.study.attrs import BEST_MODEL_ARTIFACT_ATTR
from optuna_trainer.study.bookkeeping import is_better
from optuna_trainer.study.claims import ClaimLock, held

logger = logging.getLogger(__name__)

BEST_MODEL_DIR = "best_model"
INCOMING = BEST_MODEL_DIR + ".incoming"
OUTGOING = BEST_MODEL_DIR + ".outgoing"
RECORD = "trial.json"
LOCK = BEST_MODEL_DIR + ".lock"


def best_model_lock(output_dir: str) -> filelock.FileLock:
    """The lock every worker sharing `output_dir` takes to compare with and replace `best_model/` (one writer at a
    time; the OS releases it when a worker dies)."""
    os.makedirs(output_dir, exist_ok=True)
    return filelock.FileLock(os.path.join(output_dir, LOCK))


def stored_record(output_dir: str) -> dict[str, Any] | None:
    """The `trial.json` of the current `best_model/`, or None."""
    return read_record(os.path.join(output_dir, BEST_MODEL_DIR))


def read_record(folder: str) -> dict[str, Any] | None:
    """The `trial.json` of a best-model folder, or None."""
    try:
        with open(os.path.join(folder, RECORD), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def recover(output_dir: str) -> None:
    """Undo what an interrupted save left: put the previous best back if the swap was cut between its two renames,
    and remove the half-written new one. Call it holding `best_model_lock(output_dir)`."""
    best, incoming, outgoing = (os.path.join(output_dir, name) for name in (BEST_MODEL_DIR, INCOMING, OUTGOING))
    if not os.path.isdir(best) and os.path.isdir(outgoing):
        os.rename(outgoing, best)
    for leftover in (incoming, outgoing):
        shutil.rmtree(leftover, ignore_errors=True)


def save_best_model(
    trainer: Trainer,
    output_dir: str,
    record: dict[str, Any],
    saved: str | None = None,
    publish: Callable[[str], None] | None = None,
) -> str:
    """Write the trainer's model as the new `best_model/` with `record` as its `trial.json`; return its path.

    Every process calls it (`save_model` gathers sharded weights); only the one that saves touches the files. `saved`:
    a folder `save_model` already wrote (the best evaluation of a sharded model, training/best_weights.py), moved in
    instead of saving the model as it is now. `publish(folder)`: called with the complete new best before it replaces
    the old one (the artifact store's upload); if it raises, the old `best_model/` stays.
    """
    should_save = trainer.args.should_save
    if should_save:
        recover(output_dir)
    incoming = os.path.join(output_dir, INCOMING)
    best = os.path.join(output_dir, BEST_MODEL_DIR)
    try:
        if saved is None:
            trainer.save_model(incoming)
        elif should_save:
            os.replace(saved, incoming)
        if not should_save:
            return best
        with open(os.path.join(incoming, RECORD), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        if publish is not None:
            publish(incoming)
    except BaseException:
        # A full disk (or any error) mid-write: the previous best_model/ is untouched; no half-written copy stays.
        if should_save:
            shutil.rmtree(incoming, ignore_errors=True)
        raise
    outgoing = os.path.join(output_dir, OUTGOING)
    if os.path.isdir(best):
        os.rename(best, outgoing)
    os.rename(incoming, best)
    shutil.rmtree(outgoing, ignore_errors=True)
    return best


# ---- the best model in the artifact store --------------------------------------------------------------------


def publish_best_model(
    artifacts: OpenedArtifactStore,
    study: optuna.Study,
    folder: str,
    record: dict[str, Any],
    lock: ClaimLock,
) -> bool:
    """Upload `folder` (a complete best model with its `trial.json` = `record`) as an artifact of the study, and
    make it the study's best model unless a worker elsewhere published a better one meanwhile; return whether it did.

    The upload (slow) runs outside the study's claim lock; the compare-and-replace of the study attribute that names
    the best model runs under it (milliseconds), so that two machines finishing good trials at once leave the better
    one named, and the artifact that lost is removed.
    """
    uploaded = upload_folder(artifacts, folder, study)
    entry = {**uploaded, "number": record.get("number"), "value": record.get("value")}
    direction = "minimize" if study.direction == optuna.study.StudyDirection.MINIMIZE else "maximize"
    with held(lock):
        current = study.user_attrs.get(BEST_MODEL_ARTIFACT_ATTR)
        won = not isinstance(current, dict) or is_better(entry["value"], current.get("value"), direction)
        if won:
            study.set_user_attr(BEST_MODEL_ARTIFACT_ATTR, entry)
    stale = current.get("artifact_id") if won and isinstance(current, dict) else None
    if not won:
        stale = uploaded["artifact_id"]
    if stale is not None:
        try:
            remove_artifact(artifacts, stale)
        except Exception as err:  # noqa: BLE001 - a leftover costs space, not correctness
            logger.warning(f"could not remove the superseded best model {stale} from {artifacts.description}: {err}")
    if won:
        logger.info(f"Best model of trial {record.get('number')} in {artifacts.description}")
    return won


def fetch_best_model(study: optuna.Study, artifacts: OpenedArtifactStore | None, output: str) -> dict[str, Any]:
    """Write the study's best model (weights, config, tokenizer, `trial.json`) into `output`; its `trial.json`.

    From the artifact store when the study names a best model there; else from the `best_model/` folder beside the
    best trial's run directory, when this machine has it and its `trial.json` is that trial's. Raises `ValueError`
    saying what is missing.
    """
    if os.path.exists(output) and os.listdir(output):
        raise ValueError(f"output: {output!r} exists and is not empty; give a new folder")
    entry = study.user_attrs.get(BEST_MODEL_ARTIFACT_ATTR)
    if isinstance(entry, dict):
        if artifacts is None:
            raise ValueError(
                f"artifact_store: study {study.study_name!r} keeps its best model in an artifact store; pass "
                "--artifact-store"
            )
        if os.path.isdir(output):
            os.rmdir(output)  # empty: download_folder renames the unpacked folder into place
        download_folder(artifacts, entry, output)
        return read_record(output) or {}
    if len(study.directions) > 1:
        raise ValueError(
            f"study {study.study_name!r} has {len(study.directions)} objectives: no single best model; pick a trial "
            "of study.best_trials and load its run directory's checkpoint"
        )
    try:
        best = study.best_trial
    except ValueError:
        raise ValueError(f"study {study.study_name!r} has no completed trial yet: no best model to write") from None
    run_dir = best.user_attrs.get("run_dir")
    local = os.path.join(os.path.dirname(run_dir), BEST_MODEL_DIR) if isinstance(run_dir, str) else None
    record = read_record(local) if local is not None else None
    if record is None or record.get("number") != best.number or record.get("study_name") != study.study_name:
        raise ValueError(
            f"study {study.study_name!r}: no best model of trial {best.number} in an artifact store, and "
            f"{local or 'its best_model/'} is not on this machine; run the search with artifact_store set to fetch "
            "it from anywhere"
        )
    assert local is not None
    shutil.copytree(local, output, dirs_exist_ok=True)
    return record
