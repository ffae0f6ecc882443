"""optuna_trainer: Optuna hyperparameter search as a declarative, first-class part of transformers training."""

from . import log as _log  # noqa: F401  (installs the package logger's handler)
from .arguments import OptunaSearchArguments, OptunaTrainingArguments, with_search_fields
from .callbacks import NonFiniteLossCallback, OptunaPruningCallback
from .config import parse_config_file
from .exceptions import CoordinationError, NoCompletedTrialError, TrialOutOfMemoryError
from .integrations.seq2seq import OptunaSeq2SeqTrainer, OptunaSeq2SeqTrainingArguments
from .log import set_verbosity
from .objective import Objective
from .pruners import PRUNERS, build_pruner
from .report import write_report
from .samplers import SAMPLERS, build_sampler
from .search_space import DEFAULT_HP_SPACE, SearchSpace
from .trainer import OptunaSearchMixin, OptunaTrainer, with_optuna_search

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
    "TrialOutOfMemoryError",
    "__version__",
    "build_pruner",
    "build_sampler",
    "parse_config_file",
    "set_verbosity",
    "with_optuna_search",
    "with_search_fields",
    "write_report",
]
