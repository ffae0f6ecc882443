"""sentence-transformers' `SentenceTransformerTrainer` with the Optuna search (extra:
`pip install "optuna-trainer[sentence-transformers]"`). Its `call_model_init` moves the loss onto each trial's
model, so a trial trains the model it scores; an evaluator's metric (`eval_<name>_spearman_cosine`, ...) is the
usual `objective_metric`."""

from __future__ import annotations

from dataclasses import dataclass

try:
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "optuna_trainer.integrations.sentence_transformers needs sentence-transformers: "
        'pip install "optuna-trainer[sentence-transformers]"'
    ) from err

from optuna_trainer.arguments import OptunaSearchArguments
from optuna_trainer.trainer import OptunaSearchMixin


@dataclass(repr=False)
class OptunaSentenceTransformerTrainingArguments(OptunaSearchArguments, SentenceTransformerTrainingArguments):
    """`SentenceTransformerTrainingArguments` with the search fields of `OptunaSearchArguments`."""


class OptunaSentenceTransformerTrainer(OptunaSearchMixin, SentenceTransformerTrainer):
    """`SentenceTransformerTrainer` whose `hyperparameter_search()` runs the Optuna study its arguments declare."""


__all__ = ["OptunaSentenceTransformerTrainer", "OptunaSentenceTransformerTrainingArguments"]
