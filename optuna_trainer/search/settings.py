"""Resolve one search's settings from the arguments and the call, check them all, and print them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import optuna
from transformers import TrainingArguments

from optuna_trainer.arguments import (
    output_dir_of,
    parse_hp_space,
    search_values,
    user_metric_for_best_model,
    validate_search_fields,
)
from optuna_trainer.processes.worker_env import launch_env
from optuna_trainer.space.budget import DEFAULT_BUDGET, describe_budget
from optuna_trainer.space.objective import Objective, resolve_objective, resolve_prune_signal
from optuna_trainer.space.pruners import build_pruner, describe_pruner
from optuna_trainer.space.samplers import build_sampler, describe_sampler
from optuna_trainer.space.search_space import DEFAULT_HP_SPACE, SearchSpace, describe_hp_space
from optuna_trainer.study.claims import ClaimLock
from optuna_trainer.study.storage import default_study_name, open_storage

logger = logging.getLogger(__name__)

# Keyword arguments `hyperparameter_search` takes besides its named ones: transformers passes these on to
# `optuna.create_study` (sampler, pruner, storage, study_name, directions, load_if_exists) and `Study.optimize`
# (timeout, n_jobs, catch, callbacks, gc_after_trial, show_progress_bar).
SEARCH_KWARGS = (
    "sampler",
    "pruner",
    "storage",
    "study_name",
    "directions",
    "load_if_exists",
    "timeout",
    "n_jobs",
    "catch",
    "callbacks",
    "gc_after_trial",
    "show_progress_bar",
)
# Keyword arguments of transformers' other backends (Ray Tune, W&B, SigOpt): refused with what to do instead.
_OTHER_BACKEND_KWARGS = (
    "resources_per_trial",
    "scheduler",
    "keep_checkpoints_num",
    "checkpoint_score_attr",
    "local_dir",
)


@dataclass
class SearchSettings:
    """Everything one search runs with, resolved and checked."""

    hp_space: SearchSpace | Callable[[optuna.trial.BaseTrial], dict[str, Any]]
    objective: Objective
    objective_source: str
    n_trials: int
    timeout: float | None
    sampler: optuna.samplers.BaseSampler
    sampler_spec: Any
    pruner_spec: Any
    pruner: optuna.pruners.BasePruner
    storage: optuna.storages.BaseStorage | None
    storage_description: str
    study_name: str
    storage_target: str | None = None
    catch: tuple[type[Exception], ...] = ()
    callbacks: list[Callable[..., None]] = field(default_factory=list)
    # Off by default: every trial already releases its memory (training/memory.py: release_trial_memory), and a full collection
    # after every trial costs 0.2-1 s with torch loaded.
    gc_after_trial: bool = False
    hp_name: Callable[[optuna.trial.BaseTrial], str] | None = None
    notes: list[str] = field(default_factory=list)
    # Whether the space has peft.<field> keys (training/adapters.py): then trials share the base model, each with its adapter.
    adapters: bool = False
    # Seconds between heartbeats when the storage has them (None: it has none), and the study's claim lock.
    heartbeat_interval: int | None = None
    claim_lock: ClaimLock | None = field(default=None, repr=False)
    # False: an existing study of this name is an error instead of being continued (transformers' create_study kwarg).
    load_if_exists: bool = True
    show_progress_bar: bool = True
    # The search fields as the search uses them (defaults for an arguments class without them).
    save_best_model: bool = True
    search_report: bool = True
    continue_on_oom: bool = True
    # Pruning: what is reported (None: the objective), at which step (space/budget.py), and what the step is, in words.
    prune_signal: Objective | None = None
    prune_budget: str = DEFAULT_BUDGET
    budget_description: str = ""
    # The storage as given (a URL or path; None for a storage object): what the launcher's workers announce.
    storage_url: str | None = None
    # Search-level control (search/control.py).
    enqueue_arguments: bool = False
    target_value: float | None = None
    trials_without_improvement: int | None = None

    @property
    def declarative(self) -> SearchSpace | None:
        return self.hp_space if isinstance(self.hp_space, SearchSpace) else None

    def describe(self) -> dict[str, Any]:
        """The resolved settings as plain data (printed at the start, written in the summary)."""
        return {
            "hp_space": describe_hp_space(self.hp_space),
            "objective": self.objective_source,
            "direction": self.objective.directions if self.objective.multi else self.objective.directions[0],
            "n_trials": self.n_trials,
            "timeout": self.timeout,
            "sampler": describe_sampler(self.sampler, self.sampler_spec, self.declarative),
            "pruner": describe_pruner(self.pruner, self.pruner_spec),
            "prune_metric": self._pruned_on(),
            "prune_step": self.budget_description,
            "stop_when": self._stop_rules(),
            "storage": self.storage_description,
            "study_name": self.study_name,
        }

    def _pruned_on(self) -> str:
        if isinstance(self.pruner, optuna.pruners.NopPruner):
            return "nothing (no pruning)"
        if self.prune_signal is None:
            return "the objective"
        study = self.objective.directions[0]
        own = self.prune_signal.directions[0]
        turn = "" if own == study else f", reported negated to the {study.removesuffix('e')}ing study"
        return f"{self.prune_signal.metric} ({own}d{turn}; prune_metric)"

    def _stop_rules(self) -> str:
        rules = [f"n_trials={self.n_trials} finished"]
        if self.timeout is not None:
            rules.append(f"timeout={self.timeout} s")
        if self.target_value is not None:
            rules.append(f"target_value={self.target_value}")
        if self.trials_without_improvement is not None:
            rules.append(f"{self.trials_without_improvement} trials without improvement")
        first = "; the arguments' own values run first" if self.enqueue_arguments else ""
        return ", or ".join(rules) + first

    def log(self) -> None:
        lines = ["Optuna search settings:"]
        for key, value in self.describe().items():
            lines.append(f"  {key:<12} {value}")
        lines.extend(f"  note: {n}" for n in self.notes)
        logger.info("\n".join(lines))


def resolve_settings(
    args: TrainingArguments,
    *,
    hp_space: Any = None,
    compute_objective: Callable[[dict[str, float]], Any] | None = None,
    n_trials: int | None = None,
    direction: Any = None,
    hp_name: Callable[[optuna.trial.BaseTrial], str] | None = None,
    has_compute_metrics: bool = True,
    **kwargs: Any,
) -> SearchSettings:
    """Merge the call's arguments over `args` (any arguments class) and check everything; nothing is trained here.

    Args:
        args: the trainer's arguments; a class without the search fields runs on their defaults.
        has_compute_metrics: whether the trainer computes metrics (the objective's default depends on it).
        kwargs: see `SEARCH_KWARGS`.
    """
    other = sorted(set(kwargs) & set(_OTHER_BACKEND_KWARGS))
    if other:
        raise TypeError(
            f"hyperparameter_search: {other} belong to another transformers backend (Ray Tune); OptunaTrainer runs "
            "Optuna only: run trials in parallel as workers on one storage (docs/storage.md)"
        )
    unknown = sorted(set(kwargs) - set(SEARCH_KWARGS))
    if unknown:
        raise TypeError(
            f"hyperparameter_search: unexpected keyword argument(s) {unknown}; accepted: {list(SEARCH_KWARGS)}"
        )
    validate_search_fields(args)
    fields = search_values(args)
    notes: list[str] = []

    space: SearchSpace | Callable[[optuna.trial.BaseTrial], dict[str, Any]]
    if hp_space is not None:
        # not None and not callable here, so parsed to a SearchSpace
        space = hp_space if callable(hp_space) else cast(SearchSpace, parse_hp_space(hp_space, type(args)))
    elif fields["hp_space"] is not None:
        given = fields["hp_space"]
        space = (
            given
            if callable(given)
            else (getattr(args, "search_space", None) or cast(SearchSpace, parse_hp_space(given, type(args))))
        )
    else:
        space = SearchSpace.parse(DEFAULT_HP_SPACE, type(args))
        notes.append("no hp_space given: using transformers' default space")

    n_trials = fields["n_trials"] if n_trials is None else n_trials
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials: must be a positive whole number, got {n_trials!r}")
    timeout = kwargs.get("timeout", fields["timeout"])
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValueError(f"timeout: must be a positive number of seconds or None, got {timeout!r}")
    n_jobs = kwargs.get("n_jobs", 1)
    if n_jobs != 1:
        raise ValueError(
            f"n_jobs: {n_jobs} is not supported: trials of one trainer share its model and devices; to run trials in "
            "parallel, start several workers on one shared storage (see docs/storage.md)"
        )
    if "directions" in kwargs:
        if direction is not None:
            raise ValueError(
                "direction/directions: give one of them, not both (directions=[...] for several objectives)"
            )
        direction = kwargs["directions"]
    for name in ("load_if_exists", "show_progress_bar", "gc_after_trial"):
        if name in kwargs and not isinstance(kwargs[name], bool):
            raise ValueError(f"{name}: must be True or False, got {kwargs[name]!r}")

    objective, source = resolve_objective(
        compute_objective=compute_objective,
        objective_metric=fields["objective_metric"],
        metric_for_best_model=user_metric_for_best_model(args),
        greater_is_better=args.greater_is_better,
        direction=fields["direction"] if direction is None else direction,
        has_compute_metrics=has_compute_metrics,
    )
    declarative = space if isinstance(space, SearchSpace) else None
    sampler_spec = kwargs.get("sampler", fields["sampler"])
    sampler = build_sampler(sampler_spec, declarative)
    pruner_spec = kwargs.get("pruner", fields["pruner"])
    pruner = build_pruner(pruner_spec)
    if objective.multi and not isinstance(pruner, optuna.pruners.NopPruner):
        notes.append(
            f"{len(objective.directions)} objectives: Optuna cannot prune multi-objective trials, pruning is off"
        )
        pruner, pruner_spec = optuna.pruners.NopPruner(), "none"

    catch = kwargs.get("catch", ())
    catch = tuple(catch) if isinstance(catch, (list, tuple)) else (catch,)
    for exc in catch:
        if not (isinstance(exc, type) and issubclass(exc, Exception)):
            raise TypeError(f"catch: expected exception classes, e.g. catch=(ValueError,), got {exc!r}")
    callbacks = list(kwargs.get("callbacks") or [])
    for callback in callbacks:
        if not callable(callback):
            raise TypeError(f"callbacks: expected callables callback(study, trial), got {callback!r}")
    storage_spec = kwargs.get("storage", fields["storage"])
    launched = launch_env()
    if launched is not None:
        notes.append(f"worker {launched.worker} of {launched.workers} (optuna-trainer workers)")
    opened = open_storage(storage_spec, output_dir_of(args), heartbeat_interval=fields["heartbeat_interval"])
    notes.extend(opened.notes)
    study_name = kwargs.get("study_name", fields["study_name"]) or default_study_name(output_dir_of(args))
    prune_signal = resolve_prune_signal(fields["prune_metric"], objective)
    if objective.multi:
        for name in ("target_value", "trials_without_improvement"):
            if fields[name] is not None:
                raise ValueError(
                    f"{name}: compares one objective's values; with direction={objective.directions} there are "
                    f"{len(objective.directions)}: leave it unset, or search a single objective"
                )
    return SearchSettings(
        prune_signal=prune_signal,
        prune_budget=fields["prune_budget"],
        budget_description=describe_budget(args, fields["prune_budget"]),
        enqueue_arguments=fields["enqueue_arguments"],
        target_value=fields["target_value"],
        trials_without_improvement=fields["trials_without_improvement"],
        hp_space=space,
        objective=objective,
        objective_source=source,
        n_trials=n_trials,
        timeout=timeout,
        sampler=sampler,
        sampler_spec=sampler_spec,
        pruner_spec=pruner_spec,
        pruner=pruner,
        storage=opened.storage,
        storage_description=opened.description,
        storage_target=opened.target,
        study_name=study_name,
        catch=catch,
        callbacks=callbacks,
        gc_after_trial=bool(kwargs.get("gc_after_trial", False)),
        hp_name=hp_name,
        notes=notes,
        heartbeat_interval=opened.heartbeat_interval,
        claim_lock=opened.make_lock(study_name),
        load_if_exists=kwargs.get("load_if_exists", True),
        # Under the launcher, it shows one bar for the whole study and writes the report once.
        show_progress_bar=kwargs.get("show_progress_bar", True) and launched is None,
        save_best_model=fields["save_best_model"],
        search_report=fields["search_report"] and launched is None,
        storage_url=storage_spec if isinstance(storage_spec, str) else None,
        continue_on_oom=fields["continue_on_oom"],
    )
