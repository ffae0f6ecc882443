"""TRL's `SFTTrainer` and `DPOTrainer` with the Optuna search (extra: `pip install "optuna-trainer[trl]"`).

Neither takes a `model_init`: every trial starts from a copy of the model as the trainer prepared it at
construction (with its `peft_config` adapter, if any), as for any trainer given `model=`.
"""

from __future__ import annotations

from dataclasses import dataclass

try:
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError('optuna_trainer.integrations.trl needs TRL: pip install "optuna-trainer[trl]"') from err

from ..arguments import OptunaSearchArguments
from ..trainer import OptunaSearchMixin


@dataclass(repr=False)
class OptunaSFTConfig(OptunaSearchArguments, SFTConfig):
    """TRL's `SFTConfig` with the search fields of `OptunaSearchArguments` (its own fields, e.g. `max_length`,
    may be search keys)."""


class OptunaSFTTrainer(OptunaSearchMixin, SFTTrainer):
    """TRL's `SFTTrainer` whose `hyperparameter_search()` runs the Optuna study its arguments declare."""


@dataclass(repr=False)
class OptunaDPOConfig(OptunaSearchArguments, DPOConfig):
    """TRL's `DPOConfig` with the search fields of `OptunaSearchArguments` (e.g. search `beta`)."""


class OptunaDPOTrainer(OptunaSearchMixin, DPOTrainer):
    """TRL's `DPOTrainer` whose `hyperparameter_search()` runs the Optuna study its arguments declare."""


__all__ = ["OptunaDPOConfig", "OptunaDPOTrainer", "OptunaSFTConfig", "OptunaSFTTrainer"]
