"""One set of validators for both entry points: a value refused by the arguments is refused by the call, with the
same message, before any training and before the study exists (validation.py)."""

from __future__ import annotations

import re

import optuna
import pytest
from transformers import TrainingArguments

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from optuna_trainer.validation import CALL_VALIDATORS, FIELD_VALIDATORS
from tests.support import base_args, make_dataset, tiny_model

# (setting, value, the message both paths give)
REFUSED = [
    ("timeout", float("nan"), r"timeout: must be a positive number of seconds or None, got nan"),
    ("timeout", 0, r"timeout: must be a positive number of seconds or None, got 0"),
    ("timeout", True, r"timeout: must be a positive number of seconds or None, got True"),
    ("n_trials", 0, r"n_trials: must be a positive whole number, got 0"),
    ("n_trials", 2.0, r"n_trials: must be a positive whole number, got 2.0"),
    ("direction", "up", r"direction: 'up' is not one of \['minimize', 'maximize'\]"),
    ("direction", ["maximize", "up"], r"direction: 'up' in \['maximize', 'up'\] is not one of"),
    ("study_name", " ", r"study_name: must be a non-empty name or None"),
    ("storage", "postgresql:host/db", r"storage: malformed URL"),
]


def _plain_args(tmp_path) -> TrainingArguments:
    values = base_args(tmp_path / "out")
    for name in ("storage", "n_trials"):  # search fields: a plain TrainingArguments has none
        values.pop(name)
    return TrainingArguments(**values)


@pytest.mark.parametrize(("name", "value", "message"), REFUSED, ids=[f"{n}={v!r}" for n, v, _ in REFUSED])
def test_refused_by_the_arguments(tmp_path, name, value, message):
    with pytest.raises(ValueError, match=message):
        OptunaTrainingArguments(**base_args(tmp_path / "out", **{name: value}))


@pytest.mark.parametrize(("name", "value", "message"), REFUSED, ids=[f"{n}={v!r}" for n, v, _ in REFUSED])
def test_refused_by_the_call_with_the_same_message(tmp_path, name, value, message):
    """A plain TrainingArguments (no search fields): the value comes only through hyperparameter_search(...)."""
    db = tmp_path / "study.db"
    trainer = OptunaTrainer(
        model_init=tiny_model, args=_plain_args(tmp_path), train_dataset=make_dataset(16), eval_dataset=make_dataset(8)
    )
    call = {"storage": f"sqlite:///{db}", name: value}
    with pytest.raises(ValueError, match=message):
        trainer.hyperparameter_search(
            hp_space={"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}},
            n_trials=call.pop("n_trials", 2),
            **call,
        )
    # Refused before the study exists and before any trial ran.
    assert not db.exists() or optuna.get_all_study_names(f"sqlite:///{db}") == []
    assert not list((tmp_path / "out").glob("run-*"))


def test_timeout_nan_through_the_call_was_accepted_before(tmp_path):
    """The issue's case: the call's own check (timeout <= 0) let NaN through, and a NaN timeout never fires."""
    assert not (float("nan") <= 0)  # what the old check asked
    with pytest.raises(ValueError, match=re.escape("timeout: must be a positive number of seconds or None, got nan")):
        CALL_VALIDATORS["timeout"](float("nan"))


def test_every_shared_setting_has_one_validator():
    shared = set(FIELD_VALIDATORS) & set(CALL_VALIDATORS)
    assert shared == {"n_trials", "timeout", "direction", "study_name", "storage"}
    for name in shared:
        assert CALL_VALIDATORS[name] is FIELD_VALIDATORS[name], name
