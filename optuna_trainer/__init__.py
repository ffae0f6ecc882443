"""optuna_trainer: Optuna hyperparameter search as a declarative, first-class part of transformers training."""

from optuna_trainer import log as _log  # noqa: F401  (installs the package logger's handler)
from optuna_trainer.arguments import OptunaSearchArguments, OptunaTrainingArguments, with_search_fields
from optuna_trainer.config import parse_config_file
from optuna_trainer.exceptions import CoordinationError, NoCompletedTrialError, TrialOutOfMemoryError
from optuna_trainer.integrations.seq2seq import OptunaSeq2SeqTrainer, OptunaSeq2SeqTrainingArguments
from optuna_trainer.log import set_verbosity
from optuna_trainer.output.report import show_report, write_report
from optuna_trainer.space.objective import Objective
from optuna_trainer.space.pruners import PRUNERS, build_pruner
from optuna_trainer.space.samplers import SAMPLERS, build_sampler
from optuna_trainer.space.search_space import DEFAULT_HP_SPACE, SearchSpace
from optuna_trainer.space.step_percentile import StepPercentilePruner
from optuna_trainer.trainer import OptunaSearchMixin, OptunaTrainer, with_optuna_search
from optuna_trainer.training.callbacks import NonFiniteLossCallback, OptunaPruningCallback

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_HP_SPACE",
    "PRUNERS",
    "SAMPLERS",
    "CoordinationError",
    "NoCompletedTrialError",
    "NonFiniteLossCallback",
    "Objective",
    "OptunaPruningCallback",
    "OptunaSearchArguments",
    "OptunaSearchMixin",
    "OptunaSeq2SeqTrainer",
    "OptunaSeq2SeqTrainingArguments",
    "OptunaTrainer",
    "OptunaTrainingArguments",
    "SearchSpace",
    "StepPercentilePruner",
    "TrialOutOfMemoryError",
    "__version__",
    "build_pruner",
    "build_sampler",
    "parse_config_file",
    "set_verbosity",
    "show_report",
    "with_optuna_search",
    "with_search_fields",
    "write_report",
]
