"""TRL's `SFTTrainer` and `DPOTrainer` with the Optuna search (extra: `pip install "optuna-trainer[trl]"`).

Neither takes a `model_init`: every trial starts from a copy of the model as the trainer prepared it at
construction (with its `peft_config` adapter, if any), as for any trainer given `model=`.

Both trainers prepare (tokenize, truncate, pack) their datasets in `__init__` with the arguments they were given, and
copy some arguments into attributes (`DPOTrainer.beta`, its collator's `max_length`). A searched argument must change
the training, not only `trainer.args`: the copies follow each trial's arguments (`use_trial_arguments`,
training/binding.py: `follow_arguments`), and when a trial changes an argument the preparation reads (`max_length`,
`truncation_mode`, SFT's `packing`, `dataset_text_field`, ...), the datasets given to `__init__` are prepared again
with the trial's arguments. That calls TRL's private `_prepare_dataset` (the only entry to its preparation) through
_compat.py, which names the supported trl range and the test that fails if it changes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, cast

from transformers import TrainingArguments

try:
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError('optuna_trainer.integrations.trl needs TRL: pip install "optuna-trainer[trl]"') from err

from optuna_trainer._compat import trl_dpo_prepare_dataset, trl_sft_prepare_dataset, trl_skips_dataset_preparation
from optuna_trainer.arguments import OptunaSearchArguments
from optuna_trainer.trainer import OptunaSearchMixin
from optuna_trainer.training.binding import changed_fields

# The arguments each trainer's `_prepare_dataset` reads (trl 1.16).
SFT_DATASET_FIELDS = frozenset(
    {
        "max_length",
        "truncation_mode",
        "dataset_text_field",
        "packing",
        "packing_strategy",
        "eval_packing",
        "assistant_only_loss",
        "shuffle_dataset",
    }
)
DPO_DATASET_FIELDS = frozenset({"max_length", "truncation_mode"})


class _PreparedAgain(OptunaSearchMixin):
    """Keeps the datasets as given to `__init__` and prepares them again when a trial changes what preparation
    reads. `_dataset_fields` names those arguments."""

    _dataset_fields: frozenset[str] = frozenset()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = inspect.signature(super().__init__).bind_partial(*args, **kwargs).arguments
        # As given, before preparation: a trial that changes `max_length` prepares them again from these.
        self._given_datasets = {name: bound.get(name) for name in ("train_dataset", "eval_dataset")}
        self._formatting_func = bound.get("formatting_func")
        super().__init__(*args, **kwargs)
        self._prepared_with: TrainingArguments = self.args  # type: ignore[attr-defined]

    def use_trial_arguments(self, args: TrainingArguments) -> None:
        super().use_trial_arguments(args)
        if not (changed_fields(self._prepared_with, args) & self._dataset_fields) or self._skips_preparation():
            return
        train, evaluation = self._given_datasets["train_dataset"], self._given_datasets["eval_dataset"]
        if train is not None:
            self.train_dataset = self._prepare(train, args, "train", eval_set=False)
        if evaluation is not None:
            self.eval_dataset = (
                {key: self._prepare(d, args, key, eval_set=True) for key, d in evaluation.items()}
                if isinstance(evaluation, dict)
                else self._prepare(evaluation, args, "eval", eval_set=True)
            )
        self._prepared_with = args

    def _skips_preparation(self) -> bool:
        # TRL's own (private) flags for datasets it leaves unprepared (skip_prepare_dataset, vision data): _compat.py.
        return trl_skips_dataset_preparation(self)

    def _prepare(self, dataset: Any, args: TrainingArguments, name: str, eval_set: bool) -> Any:
        raise NotImplementedError


@dataclass(repr=False)
class OptunaSFTConfig(OptunaSearchArguments, SFTConfig):
    """TRL's `SFTConfig` with the search fields of `OptunaSearchArguments` (its own fields, e.g. `max_length`,
    may be search keys)."""


class OptunaSFTTrainer(_PreparedAgain, SFTTrainer):
    """TRL's `SFTTrainer` whose `hyperparameter_search()` runs the Optuna study its arguments declare."""

    _dataset_fields = SFT_DATASET_FIELDS

    def _prepare(self, dataset: Any, args: Any, name: str, eval_set: bool) -> Any:
        packing = args.eval_packing if eval_set and args.eval_packing is not None else args.packing
        return trl_sft_prepare_dataset(
            self, dataset, args, packing=packing, formatting_func=self._formatting_func, name=name
        )


@dataclass(repr=False)
class OptunaDPOConfig(OptunaSearchArguments, DPOConfig):
    """TRL's `DPOConfig` with the search fields of `OptunaSearchArguments` (e.g. search `beta`, or `loss_type` with
    single loss names as choices: `"sigmoid"` trains as `["sigmoid"]`)."""


class OptunaDPOTrainer(_PreparedAgain, DPOTrainer):
    """TRL's `DPOTrainer` whose `hyperparameter_search()` runs the Optuna study its arguments declare."""

    _dataset_fields = DPO_DATASET_FIELDS

    def use_trial_arguments(self, args: TrainingArguments) -> None:
        previous = self.args
        super().use_trial_arguments(args)
        # DPOTrainer copies `loss_type` in __init__ under another name (`loss_types`, with `loss_weights` derived from
        # it), which the copies under the same name (training/binding.py: `follow_arguments`) do not reach; the loss
        # reads them.
        if changed_fields(previous, args) & {"loss_type", "loss_weights"}:
            dpo_args = cast(DPOConfig, args)
            self.loss_types = list(dpo_args.loss_type)
            self.loss_weights = dpo_args.loss_weights or [1.0] * len(self.loss_types)

    def _prepare(self, dataset: Any, args: Any, name: str, eval_set: bool) -> Any:
        return trl_dpo_prepare_dataset(self, dataset, args, name=name)


__all__ = ["OptunaDPOConfig", "OptunaDPOTrainer", "OptunaSFTConfig", "OptunaSFTTrainer"]
