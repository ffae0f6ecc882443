"""Checks that need the trainer (its model, datasets and metrics), run before the study is created.

`search/settings.py` checks everything the arguments alone decide. What is left needs the trainer: `model.<attribute>`
keys against the model's config, a callable `hp_space` (whose keys are only known once it is called), and the
objective metric against what evaluation can return. Each raises before `optuna.create_study`, so a bad input never
leaves a half-created study (or a FAIL trial) in the storage.
"""

from __future__ import annotations

import logging
import os
import tempfile
import typing
from typing import TYPE_CHECKING, Any

import optuna

from optuna_trainer.arguments import output_dir_of, trial_arguments
from optuna_trainer.log import optuna_verbosity
from optuna_trainer.space.search_space import (
    SearchSpace,
    as_list_item,
    check_aliases,
    check_key,
    check_model_keys,
    split_params,
    type_name,
)
from optuna_trainer.training.adapters import check_adapter_values, split_peft
from optuna_trainer.training.models import check_model_values

if TYPE_CHECKING:
    from transformers import Trainer, TrainingArguments

    from optuna_trainer.search.settings import SearchSettings

logger = logging.getLogger(__name__)

# What `Trainer.evaluate` returns without `compute_metrics`, besides timing: the loss (when the data has labels).
_METRICS_WITHOUT_COMPUTE_METRICS = ("eval_loss",)


def check_before_study(trainer: Trainer, settings: SearchSettings) -> set[str]:
    """Raise `ValueError`/`TypeError` for any input that would only fail once trials run; return the search keys
    (a callable space's as one call of it returned them)."""
    config = getattr(trainer.model, "config", None)
    if isinstance(settings.space.hp_space, SearchSpace):
        settings.space.hp_space.check_model_config(config)
        candidates = settings.space.hp_space.candidates()
    else:
        candidates = {k: [v] for k, v in probe_hp_space(settings.space.hp_space, type(trainer.args), config).items()}
    rest, adapter_values = split_peft(candidates)
    args_values, model_values = split_params(rest)
    check_argument_values(trainer.args, args_values)
    check_adapter_values(trainer.model, adapter_values, has_model_keys=bool(model_values))
    if trainer.model is not None:
        check_model_values(trainer.model, model_values)
    check_datasets(trainer)
    check_objective_metric(trainer, settings)
    return set(candidates)


def check_output_dir(args: TrainingArguments) -> None:
    """Raise `ValueError` unless this process can write `output_dir` (create it, or write in it).

    Every search writes there (the trials' runs, the best model, the report) whatever its storage: with
    `storage="memory"` nothing else touches the folder before the first save, so without this check the first trial
    trains for steps before its first write fails. Only the process that saves checks (`should_save`): under DDP
    the others write nothing. The probe writes a nameless temporary file in the folder, or in its nearest existing
    parent when the folder does not exist yet, so nothing is left behind and no folder is created.
    """
    if not args.should_save:
        return
    output_dir = os.path.abspath(output_dir_of(args))
    existing = output_dir
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(
            f"output_dir: cannot create {output_dir!r}: {existing!r} exists and is not a folder; give a folder path "
            "the search can write to"
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        where = "" if existing == output_dir else f" in {existing!r}, where it would be created"
        raise ValueError(
            f"output_dir: cannot write to {output_dir!r}{where} ({type(err).__name__}: {err.strerror or err}); give a "
            "folder the search can write to (the trials' runs, the best model and the report go there, whatever the "
            "storage)"
        ) from None


def check_datasets(trainer: Trainer) -> None:
    """A search trains and scores every trial: both datasets must be there and hold examples."""
    if trainer.train_dataset is None:
        raise ValueError("train_dataset: a search trains every trial; pass train_dataset= to the trainer")
    # sentence-transformers' trainer evaluates with its `evaluator` alone, without an eval_dataset.
    if trainer.eval_dataset is None and getattr(trainer, "evaluator", None) is None:
        raise ValueError(
            "eval_dataset: every trial is scored by an evaluation; pass eval_dataset= to the trainer "
            "(a held-out split)"
        )
    evaluation = trainer.eval_dataset
    named = evaluation.items() if isinstance(evaluation, dict) else [("eval_dataset", evaluation)]
    for name, dataset in [("train_dataset", trainer.train_dataset), *named]:
        if dataset is not None and _length(dataset) == 0:
            key = name if name in ("train_dataset", "eval_dataset") else f"eval_dataset[{name!r}]"
            raise ValueError(f"{key}: is empty (0 examples); a search needs examples to train and score each trial")


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:  # an IterableDataset has no length
        return None


def check_argument_values(args: TrainingArguments, values: dict[str, list[Any]]) -> None:
    """Raise `ValueError`, naming the key, for a searched value that the arguments class refuses (an invalid
    `save_strategy`, `optim` or `lr_scheduler_type` choice, ...): each value is tried alone on the user's arguments,
    as a trial would build them."""
    output_dir = output_dir_of(args)
    hints = typing.get_type_hints(type(args))
    for key, candidates in values.items():
        for value in candidates:
            try:
                built = trial_arguments(args, {key: value}, output_dir=output_dir)
            except Exception as err:  # noqa: BLE001 - whatever __post_init__ refuses, named by its key
                message = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise ValueError(f"hp_space[{key!r}]: {type(args).__name__} refuses {value!r}: {message}") from None
            annotation = hints.get(key, Any)
            # A list field searched with single items (`DPOConfig.loss_type`): the class must make each a list, as
            # DPOConfig does; one that keeps "labels" as it is would have the trainer read it letter by letter.
            if as_list_item(annotation, value) and not isinstance(getattr(built, key, None), list):
                raise ValueError(
                    f"hp_space[{key!r}]: {type(args).__name__} keeps the choice {value!r} as it is, and the field's "
                    f"type is {type_name(annotation)}; search a field that takes single values"
                )


def probe_hp_space(hp_space: Any, args_class: type, config: Any) -> dict[str, Any]:
    """Call a callable `hp_space` once on a scratch in-memory trial, check the keys and values it returns, and return
    them.

    The scratch study never touches the search's storage; its random sample exercises every `suggest_*` call the
    space makes, so a misspelt key or a value of the wrong type fails here rather than in the first trial.
    """
    with optuna_verbosity(optuna.logging.WARNING):  # no "A new study created in memory" line for the probe
        scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        trial = scratch.ask()
    values = hp_space(trial)
    if not isinstance(values, dict):
        raise TypeError(
            f"hp_space: the callable must return a dict of name -> value (e.g. {{'learning_rate': "
            f"trial.suggest_float('learning_rate', 1e-5, 1e-3, log=True)}}), got {type(values).__name__}"
        )
    for key, value in values.items():
        check_key(key, args_class, value=value)
    check_model_keys(values, config)
    check_aliases(values)
    return values


def check_objective_metric(trainer: Trainer, settings: SearchSettings) -> None:
    """Without `compute_metrics`, evaluation returns only `eval_loss`: any other metric is known to be absent."""
    if trainer.compute_metrics is not None:
        return
    if not type(trainer).evaluate.__module__.startswith(("transformers.", "optuna_trainer.")):
        return  # a user's evaluate() may add the metric itself
    for name, objective in (
        ("objective_metric", settings.objective.objective),
        ("prune_metric", settings.pruning.signal),
    ):
        metric = objective.metric if objective is not None else None
        if metric is None or metric in _METRICS_WITHOUT_COMPUTE_METRICS:
            continue
        raise ValueError(
            f"{name}: {metric!r} cannot be computed: the trainer has no compute_metrics, so evaluation "
            f"returns only {list(_METRICS_WITHOUT_COMPUTE_METRICS)}; pass compute_metrics= returning "
            f"{metric.removeprefix('eval_')!r}, or set {name}='loss'"
        )
