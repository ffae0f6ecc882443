"""Resolve one search's settings from the arguments and the call, check them all, and print them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna

from .arguments import OptunaTrainingArguments, parse_hp_space
from .objective import Objective, resolve_objective
from .pruners import build_pruner, describe_pruner
from .samplers import build_sampler, describe_sampler
from .search_space import DEFAULT_HP_SPACE, SearchSpace, describe_hp_space
from .claims import ClaimLock
from .storage import default_study_name, open_storage

logger = logging.getLogger(__name__)

# Keyword arguments `hyperparameter_search` takes besides transformers' named ones.
SEARCH_KWARGS = ("sampler", "pruner", "storage", "study_name", "timeout", "catch", "callbacks", "gc_after_trial", "n_jobs")


@dataclass
class SearchSettings:
    """Everything one search runs with, resolved and checked."""

    hp_space: SearchSpace | Callable[[optuna.Trial], dict[str, Any]]
    objective: Objective
    objective_source: str
    n_trials: int
    timeout: float | None
    sampler: optuna.samplers.BaseSampler
    sampler_spec: Any
    pruner: optuna.pruners.BasePruner
    storage: optuna.storages.BaseStorage | None
    storage_description: str
    study_name: str
    storage_target: str | None = None
    catch: tuple[type[BaseException], ...] = ()
    callbacks: list[Callable[..., None]] = field(default_factory=list)
    # Off by default: every trial already releases its memory (OptunaTrainer._release_memory), and a full collection
    # after every trial costs 0.2-1 s with torch loaded.
    gc_after_trial: bool = False
    hp_name: Callable[[optuna.Trial], str] | None = None
    notes: list[str] = field(default_factory=list)
    # Seconds between heartbeats when the storage has them (None: it has none), and the study's claim lock.
    heartbeat_interval: int | None = None
    claim_lock: ClaimLock | None = field(default=None, repr=False)

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
            "sampler": describe_sampler(self.sampler, self.sampler_spec),
            "pruner": describe_pruner(self.pruner),
            "storage": self.storage_description,
            "study_name": self.study_name,
        }

    def log(self) -> None:
        lines = ["Optuna search settings:"]
        for key, value in self.describe().items():
            lines.append(f"  {key:<10} {value}")
        lines.extend(f"  note: {n}" for n in self.notes)
        logger.info("\n".join(lines))


def resolve_settings(
    args: OptunaTrainingArguments,
    *,
    hp_space: Any = None,
    compute_objective: Callable[[dict[str, float]], Any] | None = None,
    n_trials: int | None = None,
    direction: Any = None,
    hp_name: Callable[[optuna.Trial], str] | None = None,
    heartbeat_interval: int | None = None,
    **kwargs: Any,
) -> SearchSettings:
    """Merge the call's arguments over `args` and check everything; nothing is trained or created here."""
    unknown = sorted(set(kwargs) - set(SEARCH_KWARGS))
    if unknown:
        raise TypeError(f"hyperparameter_search: unexpected keyword argument(s) {unknown}; accepted: {list(SEARCH_KWARGS)}")
    notes: list[str] = []

    space: SearchSpace | Callable | None
    if hp_space is not None:
        space = hp_space if callable(hp_space) else parse_hp_space(hp_space, type(args))
    elif args.hp_space is not None:
        space = args.hp_space if callable(args.hp_space) else args.search_space
    else:
        space = SearchSpace.parse(DEFAULT_HP_SPACE, type(args))
        notes.append("no hp_space given: using transformers' default space")

    n_trials = args.n_trials if n_trials is None else n_trials
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials: must be a positive whole number, got {n_trials!r}")
    timeout = kwargs.get("timeout", args.timeout)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValueError(f"timeout: must be a positive number of seconds or None, got {timeout!r}")
    n_jobs = kwargs.get("n_jobs", 1)
    if n_jobs != 1:
        raise ValueError(
            f"n_jobs: {n_jobs} is not supported: trials of one trainer share its model and devices; to run trials in "
            "parallel, start several workers on one shared storage (see docs/distributed.md)"
        )

    objective, source = resolve_objective(
        compute_objective=compute_objective,
        objective_metric=args.objective_metric,
        metric_for_best_model=args.metric_for_best_model,
        greater_is_better=args.greater_is_better,
        direction=args.direction if direction is None else direction,
    )
    declarative = space if isinstance(space, SearchSpace) else None
    sampler_spec = kwargs.get("sampler", args.sampler)
    sampler = build_sampler(sampler_spec, declarative)
    pruner = build_pruner(kwargs.get("pruner", args.pruner))
    if objective.multi and not isinstance(pruner, optuna.pruners.NopPruner):
        notes.append(f"{len(objective.directions)} objectives: Optuna cannot prune multi-objective trials, pruning is off")
        pruner = optuna.pruners.NopPruner()

    catch = kwargs.get("catch", ())
    catch = tuple(catch) if isinstance(catch, (list, tuple)) else (catch,)
    for exc in catch:
        if not (isinstance(exc, type) and issubclass(exc, BaseException)):
            raise TypeError(f"catch: expected exception classes, e.g. catch=(ValueError,), got {exc!r}")
    if heartbeat_interval is None:
        heartbeat_interval = getattr(args, "heartbeat_interval", None)
    opened = open_storage(kwargs.get("storage", args.storage), args.output_dir, heartbeat_interval=heartbeat_interval)
    notes.extend(opened.notes)
    study_name = kwargs.get("study_name", args.study_name) or default_study_name(args.output_dir)
    return SearchSettings(
        hp_space=space,
        objective=objective,
        objective_source=source,
        n_trials=n_trials,
        timeout=timeout,
        sampler=sampler,
        sampler_spec=sampler_spec,
        pruner=pruner,
        storage=opened.storage,
        storage_description=opened.description,
        storage_target=opened.target,
        study_name=study_name,
        catch=catch,
        callbacks=list(kwargs.get("callbacks") or []),
        gc_after_trial=bool(kwargs.get("gc_after_trial", False)),
        hp_name=hp_name,
        notes=notes,
        heartbeat_interval=opened.heartbeat_interval,
        claim_lock=opened.make_lock(study_name),
    )
