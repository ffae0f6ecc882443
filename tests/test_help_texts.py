"""Help texts state each default once, and right: HfArgumentParser appends "(default: X)" to every help text itself
(X being the value in force, a config file's when the example reads one), so a text may say what an unset value
means but never a default of its own, which went stale (`Number of trials of the search (default 20). (default: 10)`)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml
from transformers import HfArgumentParser

from optuna_trainer import OptunaTrainingArguments
from optuna_trainer.cli import BestModelArguments, ReportArguments
from tests.test_examples import _load as load_example

# A default written into a help text: "(default 20)", "(default: no limit)", "default true", "tpe (default)", ...
HAND_WRITTEN_DEFAULT = re.compile(r"\(default\b|\bdefault[:;]|\bdefault (true|false|\d)|^Default:|\. Default:", re.I)


@pytest.fixture(scope="module")
def example():
    return load_example("text_classification")


def _helps(*classes: type) -> dict[str, str]:
    return {
        f"{cls.__name__}.{f.name}": f.metadata["help"]
        for cls in classes
        for f in dataclasses.fields(cls)
        if "help" in f.metadata
    }


def test_no_help_text_writes_its_own_default(example):
    helps = _helps(
        OptunaTrainingArguments,
        ReportArguments,
        BestModelArguments,
        example.ModelArguments,
        example.DataArguments,
    )
    # Only the search's fields and ours: transformers' own TrainingArguments texts are not this project's.
    ours = {
        k: v
        for k, v in helps.items()
        if not k.startswith("OptunaTrainingArguments.")
        or k.split(".", 1)[1] in {f.name for f in dataclasses.fields(OptunaTrainingArguments)} - _transformers_fields()
    }
    assert len(ours) > 20
    offending = {k: v for k, v in ours.items() if HAND_WRITTEN_DEFAULT.search(v)}
    assert offending == {}


def _transformers_fields() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments)}


def test_main_job_help_states_the_config_default_once(example):
    parser = HfArgumentParser((example.ModelArguments, example.DataArguments, OptunaTrainingArguments))
    with open(example.DEFAULT_CONFIG, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    parser.set_defaults(**config)
    text = " ".join(parser.format_help().split())  # argparse wraps lines: compare with single spaces
    n_trials = re.search(r"--n_trials N_TRIALS, --n-trials N_TRIALS (.*?) --", text)
    assert n_trials is not None
    assert n_trials.group(1) == f"Number of trials of the search. (default: {config['n_trials']})"
    assert text.count("(default:") == text.count("(default: ") and "(default 20)" not in text
