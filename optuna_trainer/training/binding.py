"""Binding an arguments object to a trainer: a trial's arguments before it trains, the user's own after the search.

`Trainer` derives state from its arguments in `__init__` (the accelerator, the train batch size) and trainers copy
arguments into attributes (TRL's `DPOTrainer.beta`): giving a trainer other arguments means rebuilding and re-copying
those. One module does it, for the search (search/trial.py, search/search.py), `OptunaSearchMixin.use_trial_arguments`
(trainer.py) and the integrations that extend it (integrations/trl.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import Trainer, TrainingArguments

from optuna_trainer._compat import set_train_batch_size


def apply_arguments(trainer: Trainer, args: TrainingArguments) -> None:
    """Give the trainer a trial's arguments (or the user's back): through its `use_trial_arguments` when it has one
    (`OptunaSearchMixin`, which trainers with data prepared from their arguments extend), else `use_arguments`."""
    hook = getattr(trainer, "use_trial_arguments", None)
    if hook is not None:
        hook(args)
    else:
        use_arguments(trainer, args)


def use_arguments(trainer: Trainer, args: TrainingArguments) -> None:
    """Make `args` the trainer's arguments, rebuilding what depends on them.

    Batch size, accumulation steps and mixed precision may differ per trial, so the accelerator is rebuilt, as
    transformers' own `_hp_search_setup` does, with the train batch size `Trainer` keeps privately (_compat.py).
    """
    previous = trainer.args
    trainer.args = args
    trainer.create_accelerator_and_postprocess()
    set_train_batch_size(trainer, args.train_batch_size)
    follow_arguments(trainer, previous, args)


def changed_fields(before: TrainingArguments, after: TrainingArguments) -> set[str]:
    """The names of the dataclass fields whose values differ between two arguments objects."""
    changed = set()
    for field in dataclasses.fields(after):
        old, new = getattr(before, field.name, None), getattr(after, field.name, None)
        try:
            different = bool(old != new)
        except Exception:  # noqa: BLE001 - a value that cannot be compared (an array) counts as changed
            different = True
        if different:
            changed.add(field.name)
    return changed


def follow_arguments(trainer: Trainer, previous: TrainingArguments, args: TrainingArguments) -> None:
    """Where the trainer or its data collator keeps its own copy of an argument, under the argument's name, the copy
    follows the new value.

    Trainers copy arguments into attributes in `__init__` and read the copy afterwards: TRL's `DPOTrainer` reads
    `self.beta`, `self.label_smoothing`, ..., and the collator it builds keeps `max_length` and `truncation_mode`.
    A searched `beta` must change the loss, not only `trainer.args.beta`; so every changed field that is also an
    instance attribute of the same name holding the previous value (a copy, not something else of that name, such as
    `Trainer.deepspeed`, the engine) is set again.
    """
    changed = changed_fields(previous, args)
    for holder in (trainer, getattr(trainer, "data_collator", None)):
        if holder is None or not hasattr(holder, "__dict__"):
            continue
        for name in changed & set(vars(holder)):
            if _same(vars(holder)[name], getattr(previous, name)):
                setattr(holder, name, getattr(args, name))


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001 - values that cannot be compared are not copies of each other
        return False


__all__ = ["apply_arguments", "changed_fields", "follow_arguments", "use_arguments"]
