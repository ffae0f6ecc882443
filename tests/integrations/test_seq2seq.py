"""The search on other trainers and arguments classes: the mixin, the factories, and Seq2SeqTrainer end to end."""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from transformers import (
    HfArgumentParser,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    T5Config,
    T5ForConditionalGeneration,
    TrainerCallback,
)

from optuna_trainer import (
    OptunaSearchMixin,
    OptunaSeq2SeqTrainer,
    OptunaSeq2SeqTrainingArguments,
    with_optuna_search,
    with_search_fields,
)
from tests.support import weights_hash

VOCAB = 16
LENGTH = 4


def tiny_t5() -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=VOCAB,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5ForConditionalGeneration(config)


def copy_task(n: int, seed: int) -> Dataset:
    """Copy four tokens (2..15): generated ids are compared with the labels."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, VOCAB, size=(n, LENGTH)).tolist()
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * LENGTH] * n, "labels": ids})


def exact_match(pred) -> dict[str, float]:
    generated = np.asarray(pred.predictions)
    labels = np.asarray(pred.label_ids)
    # Generation starts with the decoder start token: compare the next LENGTH tokens with the labels.
    generated = generated[:, 1 : LENGTH + 1]
    width = min(generated.shape[1], LENGTH)
    return {"token_match": float((generated[:, :width] == labels[:, :width]).mean())}


class SeenTrialArguments(TrainerCallback):
    """Records each trial's arguments and a hash of the weights it starts from."""

    def __init__(self) -> None:
        self.args: list[Seq2SeqTrainingArguments] = []
        self.start_hashes: list[str] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.args.append(args)
        self.start_hashes.append(weights_hash(model))


def test_factories_make_parseable_classes_once():
    args_class = with_search_fields(Seq2SeqTrainingArguments)
    assert with_search_fields(Seq2SeqTrainingArguments) is args_class
    trainer_class = with_optuna_search(Seq2SeqTrainer)
    assert with_optuna_search(Seq2SeqTrainer) is trainer_class
    assert issubclass(trainer_class, OptunaSearchMixin) and issubclass(trainer_class, Seq2SeqTrainer)
    (args,) = HfArgumentParser(args_class).parse_args_into_dataclasses(
        ["--output_dir", "out", "--predict_with_generate", "true", "--n_trials", "3", "--generation_num_beams", "2"]
    )
    assert args.predict_with_generate is True and args.n_trials == 3 and args.generation_num_beams == 2


def test_seq2seq_search_keeps_generation_settings_in_every_trial(tmp_path):
    seen = SeenTrialArguments()
    args = OptunaSeq2SeqTrainingArguments(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        max_steps=6,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        eval_strategy="steps",
        eval_steps=3,
        logging_steps=3,
        save_strategy="no",
        predict_with_generate=True,
        generation_max_length=LENGTH + 2,
        disable_tqdm=True,
        hp_space={
            "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "generation_num_beams": {"type": "categorical", "choices": [1, 2]},
        },
        objective_metric="token_match",
        n_trials=2,
        sampler={"name": "random", "seed": 0},
        pruner="none",
        storage="memory",
        search_report=False,
    )
    trainer = OptunaSeq2SeqTrainer(
        model=tiny_t5(),
        args=args,
        train_dataset=copy_task(32, 0),
        eval_dataset=copy_task(16, 1),
        compute_metrics=exact_match,
        callbacks=[seen],
    )
    best = trainer.hyperparameter_search()
    assert trainer.args is args
    assert len(seen.args) == 2
    for trial, trial_args in zip(trainer.study.trials, seen.args, strict=True):
        assert isinstance(trial_args, Seq2SeqTrainingArguments)
        assert trial_args.predict_with_generate is True and trial_args.generation_max_length == LENGTH + 2
        assert trial_args.generation_num_beams == trial.params["generation_num_beams"]
        assert trial_args.learning_rate == trial.params["learning_rate"]
    # Without model_init every trial starts from the same initial weights.
    assert len(set(seen.start_hashes)) == 1
    # The objective is the generation metric (a fraction of matching tokens), maximized.
    assert trainer.study.direction.name == "MAXIMIZE"
    assert 0.0 <= best.objective <= 1.0
    assert all(0.0 <= v <= 1.0 for t in trainer.study.trials for v in t.intermediate_values.values())
