"""Resolve one search's settings from the arguments and the call, once, into small frozen objects.

One resolver per concern, each returning a frozen object: the space and its sampler (`SpaceSettings`), the objective
(`ObjectiveSettings`), pruning (`PruningSettings`), the storage and the study in it (`StorageSettings`), and what
controls the loop (`ControlSettings`). `SearchSettings` holds the five, the launcher's environment (read once) and
the notes printed with them. The values passed to `hyperparameter_search(...)` are checked by the same validators as
the arguments' `__post_init__` (validation.py). Nothing here trains or creates the study (search/prepare.py).
"""

from __future__ import annotations

import dataclasses
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
from optuna_trainer.processes.worker_env import LaunchEnv
from optuna_trainer.space._registry import parse_named_spec
from optuna_trainer.space.budget import DEFAULT_BUDGET, describe_budget
from optuna_trainer.space.objective import Objective, resolve_objective, resolve_prune_signal
from optuna_trainer.space.pruners import DEFAULT_PRUNER, build_pruner, describe_pruner, is_default_pruner
from optuna_trainer.space.samplers import build_sampler, continued_sampler, describe_sampler, is_default_sampler
from optuna_trainer.space.search_space import DEFAULT_HP_SPACE, SearchSpace, describe_hp_space
from optuna_trainer.study.artifacts import OpenedArtifactStore, open_artifact_store
from optuna_trainer.study.claims import ClaimLock
from optuna_trainer.study.storage import default_study_name, open_storage
from optuna_trainer.validation import validate_call

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

HpSpace = SearchSpace | Callable[[optuna.trial.BaseTrial], dict[str, Any]]


@dataclass(frozen=True)
class SpaceSettings:
    """What is searched and how it is sampled.

    Attributes:
        hp_space: the declarative space, or transformers' `hp_space(trial) -> dict`.
        sampler: the sampler, built once (its seed advanced past a continued study's trials, search/prepare.py).
        sampler_spec: the sampler as given (its printed description names its arguments).
        hp_name: trial -> run directory name (transformers' hook), or None for `run-{number}`.
        adapters: whether the space has `peft.<field>` keys (then trials share the base model, each with its
            adapter): known once the keys are checked (search/checks.py).
    """

    hp_space: HpSpace
    sampler: optuna.samplers.BaseSampler
    sampler_spec: Any
    hp_name: Callable[[optuna.trial.BaseTrial], str] | None = None
    adapters: bool = False

    @property
    def declarative(self) -> SearchSpace | None:
        return self.hp_space if isinstance(self.hp_space, SearchSpace) else None


@dataclass(frozen=True)
class ObjectiveSettings:
    """What a trial's value is: `objective` (metrics -> value, its directions) and where it came from, in words."""

    objective: Objective
    source: str

    @property
    def directions(self) -> list[str]:
        return self.objective.directions

    @property
    def direction(self) -> str:
        """The direction of a single objective (the first of several)."""
        return self.objective.directions[0]

    @property
    def multi(self) -> bool:
        return self.objective.multi


@dataclass(frozen=True)
class PruningSettings:
    """What is reported to the pruner, at which step, and whether trials are pruned at all.

    Attributes:
        pruner: the pruner, built once (`NopPruner` with several objectives).
        pruner_spec: the pruner as given ("none" when turned off for several objectives).
        enabled: whether trials report and may be pruned: False with several objectives, which Optuna cannot
            prune (decided here, once, for the whole search).
        signal: what is reported when it differs from the objective (`prune_metric`), else None.
        budget: what a reported step is: "samples" or "steps" (space/budget.py).
        budget_description: the step, in words, for the printed settings.
    """

    pruner: optuna.pruners.BasePruner
    pruner_spec: Any
    enabled: bool
    signal: Objective | None
    budget: str
    budget_description: str

    @property
    def active(self) -> bool:
        """Whether a trial can actually be pruned (a pruner other than `NopPruner`)."""
        return self.enabled and not isinstance(self.pruner, optuna.pruners.NopPruner)


@dataclass(frozen=True)
class StorageSettings:
    """The storage, opened once (study/storage.py), and the study in it.

    Attributes:
        storage: the storage object (None: Optuna's in-memory storage).
        description: printable, password-masked.
        target: what `optuna-dashboard` opens (the masked URL or the journal file), None in memory.
        url: the storage as given (a URL or path; None for a storage object): what the launcher's workers announce.
        study_name: the study's name in the storage.
        heartbeat_interval: seconds between heartbeats, None when the storage has none.
        claim_lock: the lock that makes "count the budget, then create a trial" one step across workers.
        load_if_exists: False: an existing study of this name is an error instead of being continued.
        artifacts: the artifact store (`artifact_store`), opened and checked once; None keeps everything local.
    """

    storage: optuna.storages.BaseStorage | None
    description: str
    target: str | None
    url: str | None
    study_name: str
    heartbeat_interval: int | None = None
    claim_lock: ClaimLock | None = field(default=None, repr=False)
    load_if_exists: bool = True
    artifacts: OpenedArtifactStore | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ControlSettings:
    """What controls the loop: how many trials, when to stop, what a failure does, what is written.

    Attributes:
        n_trials: the study's number of finished (COMPLETE or PRUNED) trials, over every run and worker.
        timeout: seconds after which this worker starts no new trial, or None.
        catch: exception classes a trial may fail with while the search goes on (Study.optimize's `catch`).
        callbacks: the user's `callback(study, frozen_trial)` after each trial.
        gc_after_trial: a full garbage collection after every trial (off by default: each trial already releases
            its memory, training/memory.py, and a full collection costs 0.2-1 s with torch loaded).
        show_progress_bar: the trials' progress bar (off under the launcher, which shows one for the study).
        save_best_model / search_report / continue_on_oom / oom_infeasible / isolate_trials / enqueue_arguments /
            skip_duplicates: the
            search fields of those names.
        target_value / trials_without_improvement: stop rules (search/control.py).
    """

    n_trials: int
    timeout: float | None = None
    catch: tuple[type[Exception], ...] = ()
    callbacks: tuple[Callable[..., None], ...] = ()
    gc_after_trial: bool = False
    show_progress_bar: bool = True
    save_best_model: bool = True
    search_report: bool = True
    continue_on_oom: bool = True
    oom_infeasible: bool = True
    isolate_trials: bool = False
    enqueue_arguments: bool = False
    skip_duplicates: bool = True
    target_value: float | None = None
    trials_without_improvement: int | None = None


@dataclass(frozen=True)
class SearchSettings:
    """Everything one search runs with, resolved and checked once.

    Attributes:
        space, objective, pruning, storage, control: one frozen object per concern (see each class).
        launched: what `optuna-trainer workers` told this process (processes/worker_env.py), or None.
        notes: lines printed with the settings (defaults taken, what a setting turned off).
    """

    space: SpaceSettings
    objective: ObjectiveSettings
    pruning: PruningSettings
    storage: StorageSettings
    control: ControlSettings
    launched: LaunchEnv | None = None
    notes: tuple[str, ...] = ()

    def with_notes(self, *notes: str, **changes: Any) -> SearchSettings:
        """A copy with `notes` added and the given fields replaced (search/prepare.py, once the study is known)."""
        return dataclasses.replace(self, notes=(*self.notes, *notes), **changes)

    def describe(self) -> dict[str, Any]:
        """The resolved settings as plain data (printed at the start, written in the summary)."""
        objective, control = self.objective, self.control
        defaults = self._defaults()
        return {
            "hp_space": describe_hp_space(self.space.hp_space),
            "objective": objective.source,
            "direction": objective.directions if objective.multi else objective.direction,
            "n_trials": control.n_trials,
            "timeout": control.timeout,
            "sampler": describe_sampler(self.space.sampler, self.space.sampler_spec, self.space.declarative),
            "pruner": describe_pruner(self.pruning.pruner, self.pruning.pruner_spec),
            "prune_metric": self._pruned_on(),
            "prune_step": self.pruning.budget_description,
            "stop_when": self._stop_rules(),
            "duplicates": self._duplicates(),
            **({"defaults": defaults} if defaults else {}),
            "on_oom": self._out_of_memory(),
            **(
                {"isolation": "each trial in a fresh child process (isolate_trials)"} if control.isolate_trials else {}
            ),
            "storage": self.storage.description,
            "study_name": self.storage.study_name,
            **({"artifacts": self._artifacts()} if self.storage.artifacts is not None else {}),
        }

    def _duplicates(self) -> str:
        control = self.control
        if not control.skip_duplicates:
            return "every trial trains, repeats too (skip_duplicates=false)"
        return "a repeat of a finished trial's parameters takes its result, untrained (skip_duplicates)"

    def _defaults(self) -> str:
        """Which of the settings that decide what the search costs and finds were left at the project's defaults, so
        that a log tells what was chosen for its user (on recorded curves) from what its user chose."""
        pruning = self.pruning
        chosen = {
            "sampler": is_default_sampler(self.space.sampler_spec),
            "pruner": pruning.active and is_default_pruner(pruning.pruner, pruning.pruner_spec),
            "prune_step": pruning.active and pruning.budget == DEFAULT_BUDGET,
            "duplicates": self.control.skip_duplicates,
        }
        names = [name for name, default in chosen.items() if default]
        if not names:
            return ""
        plural = "s" if len(names) > 1 else ""
        return f"{', '.join(names)} at the project's default{plural} (docs/search.md says why)"

    def _artifacts(self) -> str:
        assert self.storage.artifacts is not None
        return f"{self.storage.artifacts.description} (each trial's newest checkpoint, the best model)"

    def _pruned_on(self) -> str:
        if not self.pruning.active:
            return "nothing (no pruning)"
        signal = self.pruning.signal
        if signal is None:
            return "the objective"
        study = self.objective.direction
        own = signal.directions[0]
        turn = "" if own == study else f", reported negated to the {study.removesuffix('e')}ing study"
        return f"{signal.metric} ({own}d{turn}; prune_metric)"

    def _out_of_memory(self) -> str:
        if not self.control.continue_on_oom:
            return "stops the search (continue_on_oom=false)"
        if self.control.oom_infeasible:
            return (
                "the trial is recorded infeasible (PRUNED, constraint out_of_memory=1: the sampler avoids its region); "
                "the search goes on"
            )
        return "the trial is FAIL; the search goes on"

    def _stop_rules(self) -> str:
        control = self.control
        rules = [f"n_trials={control.n_trials} finished"]
        if control.timeout is not None:
            rules.append(f"timeout={control.timeout} s")
        if control.target_value is not None:
            rules.append(f"target_value={control.target_value}")
        if control.trials_without_improvement is not None:
            rules.append(f"{control.trials_without_improvement} trials without improvement")
        first = "; the arguments' own values run first" if control.enqueue_arguments else ""
        return ", or ".join(rules) + first

    def log(self) -> None:
        lines = ["Optuna search settings:"]
        for key, value in self.describe().items():
            lines.append(f"  {key:<12} {value}")
        lines.extend(f"  note: {n}" for n in self.notes)
        logger.info("\n".join(lines))


# ---- the resolvers -----------------------------------------------------------------------------------------------


def resolve_settings(
    args: TrainingArguments,
    *,
    hp_space: Any = None,
    compute_objective: Callable[[dict[str, float]], Any] | None = None,
    n_trials: int | None = None,
    direction: Any = None,
    hp_name: Callable[[optuna.trial.BaseTrial], str] | None = None,
    has_compute_metrics: bool = True,
    launched: LaunchEnv | None = None,
    existing_trials: Callable[[str, optuna.storages.BaseStorage | None], int] | None = None,
    **kwargs: Any,
) -> SearchSettings:
    """Merge the call's arguments over `args` (any arguments class) and check everything; nothing is trained here.

    Args:
        args: the trainer's arguments; a class without the search fields runs on their defaults.
        has_compute_metrics: whether the trainer computes metrics (the objective's default depends on it).
        launched: what `optuna-trainer workers` told this process (read once by search/prepare.py), or None.
        existing_trials: `(study_name, storage) -> the number of trials the study already holds` (0 for a new
            one), so that a seeded sampler continuing a study is built once, with its seed advanced past them.
        kwargs: see `SEARCH_KWARGS`.
    """
    check_call(kwargs, n_trials=n_trials, direction=direction)
    validate_search_fields(args)
    fields = search_values(args)
    call = {k: v for k, v in kwargs.items() if k in SEARCH_KWARGS}
    notes: list[str] = []
    if launched is not None:
        notes.append(f"worker {launched.worker} of {launched.workers} (optuna-trainer workers)")

    objective = resolve_objective_settings(args, fields, compute_objective, direction, call, has_compute_metrics)
    storage = resolve_storage_settings(args, fields, call, notes)
    existing = existing_trials(storage.study_name, storage.storage) if existing_trials is not None else 0
    space = resolve_space_settings(args, fields, hp_space, hp_name, call, notes, existing)
    pruning = resolve_pruning_settings(args, fields, objective, call, notes)
    control = resolve_control_settings(fields, n_trials, objective, call, launched)
    return SearchSettings(
        space=space,
        objective=objective,
        pruning=pruning,
        storage=storage,
        control=control,
        launched=launched,
        notes=tuple(notes),
    )


def check_call(kwargs: dict[str, Any], *, n_trials: Any, direction: Any) -> None:
    """Refuse the call's unknown keyword arguments, then check its values with the arguments' own validators."""
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
    if "directions" in kwargs and direction is not None:
        raise ValueError("direction/directions: give one of them, not both (directions=[...] for several objectives)")
    given = {**kwargs, "n_trials": n_trials, "direction": kwargs.get("directions", direction)}
    given.pop("directions", None)
    validate_call({key: value for key, value in given.items() if value is not None})


def resolve_space_settings(
    args: TrainingArguments,
    fields: dict[str, Any],
    hp_space: Any,
    hp_name: Callable[[optuna.trial.BaseTrial], str] | None,
    call: dict[str, Any],
    notes: list[str],
    existing_trials: int,
) -> SpaceSettings:
    """The space (parsed once: the arguments' own parse is reused) and its sampler, built once."""
    space: HpSpace
    if hp_space is not None:
        space = hp_space if callable(hp_space) else cast(SearchSpace, parse_hp_space(hp_space, type(args)))
    elif fields["hp_space"] is not None:
        given = fields["hp_space"]
        parsed = getattr(args, "search_space", None)  # parsed by __post_init__ (arguments.py)
        space = given if callable(given) else (parsed or cast(SearchSpace, parse_hp_space(given, type(args))))
    else:
        space = SearchSpace.parse(DEFAULT_HP_SPACE, type(args))
        notes.append("no hp_space given: using transformers' default space")
    declarative = space if isinstance(space, SearchSpace) else None
    spec = call.get("sampler", fields["sampler"])
    # Built once: with its seed advanced past the trials of a study it continues, else as given.
    continued = continued_sampler(spec, declarative, existing_trials)
    sampler = continued if continued is not None else build_sampler(spec, declarative)
    if continued is not None:
        notes.append(
            f"sampler: the study has {existing_trials} trials, so its seed continues as seed + {existing_trials} "
            "(the given seed again would draw their values again)"
        )
    return SpaceSettings(hp_space=space, sampler=sampler, sampler_spec=spec, hp_name=hp_name)


def resolve_objective_settings(
    args: TrainingArguments,
    fields: dict[str, Any],
    compute_objective: Callable[[dict[str, float]], Any] | None,
    direction: Any,
    call: dict[str, Any],
    has_compute_metrics: bool,
) -> ObjectiveSettings:
    objective, source = resolve_objective(
        compute_objective=compute_objective,
        objective_metric=fields["objective_metric"],
        metric_for_best_model=user_metric_for_best_model(args),
        greater_is_better=args.greater_is_better,
        direction=call.get("directions", fields["direction"] if direction is None else direction),
        has_compute_metrics=has_compute_metrics,
    )
    if objective.multi:
        for name in ("target_value", "trials_without_improvement"):
            if fields[name] is not None:
                raise ValueError(
                    f"{name}: compares one objective's values; with direction={objective.directions} there are "
                    f"{len(objective.directions)}: leave it unset, or search a single objective"
                )
    return ObjectiveSettings(objective=objective, source=source)


def resolve_pruning_settings(
    args: TrainingArguments,
    fields: dict[str, Any],
    objective: ObjectiveSettings,
    call: dict[str, Any],
    notes: list[str],
) -> PruningSettings:
    """The pruner, built once; several objectives turn pruning off here, for the whole search."""
    spec = call.get("pruner", fields["pruner"])
    pruner: optuna.pruners.BasePruner
    if objective.multi:
        if not _is_no_pruner(spec):
            notes.append(
                f"{len(objective.directions)} objectives: Optuna cannot prune multi-objective trials, pruning is off"
            )
        pruner, spec = optuna.pruners.NopPruner(), "none"
    else:
        pruner = build_pruner(spec)
    return PruningSettings(
        pruner=pruner,
        pruner_spec=spec,
        enabled=not objective.multi,
        signal=resolve_prune_signal(fields["prune_metric"], objective.objective),
        budget=fields["prune_budget"],
        budget_description=describe_budget(args, fields["prune_budget"]),
    )


def _is_no_pruner(spec: Any) -> bool:
    if isinstance(spec, optuna.pruners.BasePruner):
        return isinstance(spec, optuna.pruners.NopPruner)
    return parse_named_spec(spec, "pruner", DEFAULT_PRUNER)[0] == "none"


def resolve_storage_settings(
    args: TrainingArguments, fields: dict[str, Any], call: dict[str, Any], notes: list[str]
) -> StorageSettings:
    """The storage, opened once (the report and the launcher's announcement reuse it), and the study's name."""
    spec = call.get("storage", fields["storage"])
    opened = open_storage(spec, output_dir_of(args), heartbeat_interval=fields["heartbeat_interval"])
    notes.extend(opened.notes)
    study_name = call.get("study_name", fields["study_name"]) or default_study_name(output_dir_of(args))
    strategy = getattr(args, "save_strategy", "no")
    if fields["artifact_store"] and getattr(strategy, "value", strategy) == "no":
        notes.append(
            "artifact_store: save_strategy is 'no', so trials save no checkpoint to resume from (a killed trial starts "
            "over); only the best model goes to the store. Set save_strategy='steps' and save_steps to resume"
        )
    return StorageSettings(
        storage=opened.storage,
        description=opened.description,
        target=opened.target,
        url=spec if isinstance(spec, str) else None,
        study_name=study_name,
        heartbeat_interval=opened.heartbeat_interval,
        claim_lock=opened.make_lock(study_name),
        load_if_exists=call.get("load_if_exists", True),
        # Checked by a write and a read now, so that a store that cannot be used fails before any training.
        artifacts=open_artifact_store(fields["artifact_store"]) if fields["artifact_store"] else None,
    )


def resolve_control_settings(
    fields: dict[str, Any],
    n_trials: int | None,
    objective: ObjectiveSettings,
    call: dict[str, Any],
    launched: LaunchEnv | None,
) -> ControlSettings:
    catch = call.get("catch", ())
    catch = tuple(catch) if isinstance(catch, (list, tuple)) else (catch,)
    return ControlSettings(
        n_trials=fields["n_trials"] if n_trials is None else n_trials,
        timeout=call.get("timeout", fields["timeout"]),
        catch=catch,
        callbacks=tuple(call.get("callbacks") or ()),
        gc_after_trial=bool(call.get("gc_after_trial", False)),
        # Under the launcher, it shows one bar for the whole study and writes the report once.
        show_progress_bar=call.get("show_progress_bar", True) and launched is None,
        save_best_model=fields["save_best_model"],
        search_report=fields["search_report"] and launched is None,
        continue_on_oom=fields["continue_on_oom"],
        oom_infeasible=fields["oom_infeasible"],
        isolate_trials=fields["isolate_trials"],
        enqueue_arguments=fields["enqueue_arguments"],
        skip_duplicates=fields["skip_duplicates"],
        target_value=fields["target_value"],
        trials_without_improvement=fields["trials_without_improvement"],
    )
