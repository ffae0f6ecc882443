"""The private names of other libraries the package relies on (optuna_trainer/_compat.py): each test fails when its
name disappears or stops meaning what the package reads it for, so that an upgrade says so here, not in a search."""

from __future__ import annotations

import dataclasses
import datetime
import inspect
from dataclasses import fields
from typing import Any

import optuna
import pytest
import torch.distributed as dist
from transformers import Trainer, TrainingArguments

from optuna_trainer._compat import (
    set_process_group_timeout,
    set_train_batch_size,
    storage_location,
    study_stop_requested,
    study_storage,
    trl_dpo_prepare_dataset,
    trl_sft_prepare_dataset,
    trl_skips_dataset_preparation,
)
from tests.support import make_dataset, tiny_model


def test_study_stop_sets_the_flag_read_here():
    study = optuna.create_study()
    assert study_stop_requested(study) is False

    def stop(trial: optuna.Trial) -> float:
        trial.study.stop()
        return 0.0

    study.optimize(stop, n_trials=3)
    assert len(study.trials) == 1  # stop() ended that optimize
    assert study_stop_requested(study) is True  # and the request is still readable after it
    study.optimize(lambda trial: 0.0, n_trials=1)
    assert study_stop_requested(study) is False  # the next optimize resets it


def test_trainer_reads_its_train_batch_size(tmp_path):
    trainer = Trainer(
        model=tiny_model(),
        args=TrainingArguments(
            output_dir=str(tmp_path), per_device_train_batch_size=4, use_cpu=True, report_to="none"
        ),
        train_dataset=make_dataset(32),
    )
    assert trainer._train_batch_size == 4  # the attribute exists and holds the derived size
    set_train_batch_size(trainer, 8)
    assert trainer.get_train_dataloader().total_batch_size == 8  # and the train dataloader reads it


def test_torch_can_set_a_group_timeout(tmp_path):
    """A one-process gloo group: the setter exists and takes a timedelta."""
    assert callable(getattr(dist.distributed_c10d, "_set_pg_timeout", None))
    if dist.is_initialized():
        pytest.skip("a process group is already up in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        assert set_process_group_timeout(datetime.timedelta(seconds=42)) is True
    finally:
        dist.destroy_process_group()


def test_storage_location_of_objects(tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    rdb = optuna.create_study(storage=optuna.storages.RDBStorage(url), study_name="s")
    assert storage_location(study_storage(rdb)) == url
    path = str(tmp_path / "journal.log")
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    assert storage_location(study_storage(optuna.create_study(storage=journal, study_name="j"))) == path
    assert storage_location(study_storage(optuna.create_study())) is None  # in memory: nothing to open


def test_trl_keeps_its_dataset_flags(tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from tests.integrations.test_trl import common_args, tiny_llama, word_tokenizer

    tokenizer = word_tokenizer()
    values = {k: v for k, v in common_args(str(tmp_path)).items() if k in {f.name for f in fields(trl.SFTConfig)}}
    trainer = trl.SFTTrainer(
        model=tiny_llama(len(tokenizer)),
        args=trl.SFTConfig(**{**values, "eval_strategy": "no"}, dataset_kwargs={"skip_prepare_dataset": True}),
        train_dataset=Dataset.from_dict({"input_ids": [[3, 4, 5, 1]] * 8}),
        processing_class=tokenizer,
    )
    assert trl_skips_dataset_preparation(trainer) is True
    assert trl_skips_dataset_preparation(object()) is False


def test_trl_prepares_datasets_as_told(tmp_path):
    """Both trainers' `_prepare_dataset` keep the parameters they are called with, and read the arguments given to
    the call, not the trainer's own (a trial's `max_length` reaches its datasets)."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from tests.integrations.test_trl import common_args, preference_data, tiny_llama, word_tokenizer

    sft_params = list(inspect.signature(trl.SFTTrainer._prepare_dataset).parameters)
    dpo_params = list(inspect.signature(trl.DPOTrainer._prepare_dataset).parameters)
    assert sft_params == ["self", "dataset", "processing_class", "args", "packing", "formatting_func", "dataset_name"]
    assert dpo_params == ["self", "dataset", "processing_class", "args", "dataset_name"]

    tokenizer = word_tokenizer()

    def config(cls: type) -> Any:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in common_args(str(tmp_path)).items() if k in names}
        return cls(**{**values, "eval_strategy": "no", "max_length": 16})

    sft_args = config(trl.SFTConfig)
    texts = Dataset.from_dict({"text": ["red green blue one two three cat dog"] * 4})
    sft = trl.SFTTrainer(
        model=tiny_llama(len(tokenizer)), args=sft_args, train_dataset=texts, processing_class=tokenizer
    )
    assert len(sft.train_dataset[0]["input_ids"]) == 9  # eight words and the end of sequence
    short = dataclasses.replace(sft_args, max_length=3)
    prepared = trl_sft_prepare_dataset(sft, texts, short, packing=False, formatting_func=None, name="train")
    assert [len(ids) for ids in prepared["input_ids"]] == [3] * 4

    dpo_args = config(trl.DPOConfig)
    pairs = preference_data(0, n=4)
    dpo = trl.DPOTrainer(
        model=tiny_llama(len(tokenizer)),
        ref_model=tiny_llama(len(tokenizer)),
        args=dpo_args,
        train_dataset=pairs,
        processing_class=tokenizer,
    )
    assert len(dpo.train_dataset) == 4
    # Two-word prompts fill a max_length of 2: TRL drops them, which it does only when it reads these arguments.
    assert len(trl_dpo_prepare_dataset(dpo, pairs, dataclasses.replace(dpo_args, max_length=2), name="train")) == 0
