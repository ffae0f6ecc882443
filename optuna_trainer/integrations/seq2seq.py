"""`Seq2SeqTrainer` with the Optuna search: generation settings (`predict_with_generate`, `generation_max_length`,
`generation_num_beams`) are kept in every trial, and may be search keys."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

from optuna_trainer.arguments import OptunaSearchArguments
from optuna_trainer.trainer import OptunaSearchMixin


@dataclass(repr=False)
class OptunaSeq2SeqTrainingArguments(OptunaSearchArguments, Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` with the search fields of `OptunaSearchArguments`."""


class OptunaSeq2SeqTrainer(OptunaSearchMixin, Seq2SeqTrainer):
    """`Seq2SeqTrainer` whose `hyperparameter_search()` runs the Optuna study its arguments declare."""


__all__ = ["OptunaSeq2SeqTrainer", "OptunaSeq2SeqTrainingArguments"]
