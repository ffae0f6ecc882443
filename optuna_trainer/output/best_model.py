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
import os
import shutil
from typing import Any

import filelock
from transformers import Trainer

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
    try:
        with open(os.path.join(output_dir, BEST_MODEL_DIR, RECORD), encoding="utf-8") as f:
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


def save_best_model(trainer: Trainer, output_dir: str, record: dict[str, Any], saved: str | None = None) -> str:
    """Write the trainer's model as the new `best_model/` with `record` as its `trial.json`; return its path.

    Every process calls it (`save_model` gathers sharded weights); only the one that saves touches the files. `saved`:
    a folder `save_model` already wrote (the best evaluation of a sharded model, training/best_weights.py), moved in
    instead of saving the model as it is now.
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
