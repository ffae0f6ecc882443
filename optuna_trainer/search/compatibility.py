"""Before a search continues a stored study: check that the study was made by settings it can continue.

A rerun of the same command continues its study (the default SQLite file under `output_dir`). Optuna loads a study
whatever the new settings say: a changed direction is silently kept, a second objective fails every trial, a changed
distribution fails each trial with Optuna's own error. Here every such change stops the search before any training,
naming what changed, old and new, and how to start a new study instead. Changes that are safe (a new search key, a
wider or narrower range of the same kind) go on, with one log line each.

What a study was made by is read from the study itself (its directions, its trials' distributions) and from the one
user attribute the search writes when it creates the study (`OBJECTIVE_ATTR`: the objective metric).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from optuna_trainer.space.search_space import SearchSpace
from optuna_trainer.study.attrs import OBJECTIVE_ATTR, PRUNING_ATTR
from optuna_trainer.study.bookkeeping import FINISHED

if TYPE_CHECKING:
    from optuna_trainer.search.settings import SearchSettings

logger = logging.getLogger(__name__)


def check_continuation(study: optuna.Study, settings: SearchSettings) -> None:
    """Raise `ValueError` if `settings` cannot continue `study`; record the objective on a new study."""
    finished = study.get_trials(deepcopy=False, states=FINISHED)
    how = (
        f"to start a new study instead, give another study_name (now {settings.storage.study_name!r}) or another "
        "output_dir"
    )
    where = f"study {settings.storage.study_name!r} in {settings.storage.description}"
    old_directions = [d.name.lower() for d in study.directions]
    new_directions = list(settings.objective.directions)
    if len(old_directions) != len(new_directions):
        raise ValueError(
            f"direction: {where} has {len(old_directions)} objective(s) {old_directions}; these settings have "
            f"{len(new_directions)} {new_directions}. Its trials cannot be compared with the new ones; {how}"
        )
    if old_directions != new_directions:
        # Even with no finished trial: a study's directions are fixed when it is created, so trials would be told
        # to the study the wrong way round.
        raise ValueError(
            f"direction: {where} was created to {_directions(old_directions)}; these settings "
            f"{_directions(new_directions)}. Its {len(finished)} finished trial(s) were scored the other way, and "
            f"BestRun and best_model/ would then name different trials; set direction={_given(old_directions)}, "
            f"or {how}"
        )
    stored = study.user_attrs.get(OBJECTIVE_ATTR)
    metric = metric_name(settings)
    if stored is None:
        if not finished:
            study.set_user_attr(OBJECTIVE_ATTR, metric)
    elif stored != metric and finished:
        raise ValueError(
            f"objective_metric: {where} scored its {len(finished)} finished trial(s) by {stored!r}; these settings "
            f"score by {metric!r}. Values of two metrics cannot be compared; set objective_metric={stored!r} (or "
            f"compute_objective back), or {how}"
        )
    check_pruning(study, settings, finished, where, how)
    if isinstance(settings.space.hp_space, SearchSpace) and finished:
        check_distributions(finished, settings.space.hp_space, how)


def check_pruning(
    study: optuna.Study,
    settings: SearchSettings,
    finished: list[optuna.trial.FrozenTrial],
    where: str,
    how: str,
) -> None:
    """The pruner compares a trial's intermediate values with the earlier trials': they must be the same metric at
    the same kind of step. A study without the attribute was made before `prune_budget` existed: optimizer steps."""
    signal = settings.pruning.signal.metric if settings.pruning.signal is not None else None
    new = {"budget": settings.pruning.budget, "metric": signal or metric_name(settings)}
    reported = [t for t in finished if t.intermediate_values]
    stored = study.user_attrs.get(PRUNING_ATTR)
    if stored is None:
        if not reported:
            study.set_user_attr(PRUNING_ATTR, new)
            return
        stored = {"budget": "steps", "metric": study.user_attrs.get(OBJECTIVE_ATTR, new["metric"])}
    if not reported:
        if stored != new:
            study.set_user_attr(PRUNING_ATTR, new)
        return
    if stored.get("budget") != new["budget"]:
        raise ValueError(
            f"prune_budget: {where} reported its {len(reported)} trial(s)' evaluations at {stored.get('budget')}; "
            f"these settings report at {new['budget']}. The pruner would compare values at steps of two kinds; set "
            f"prune_budget={stored.get('budget')!r}, or {how}"
        )
    if stored.get("metric") != new["metric"]:
        raise ValueError(
            f"prune_metric: {where} reported {stored.get('metric')!r} to the pruner for its {len(reported)} "
            f"trial(s); these settings report {new['metric']!r}. The pruner would compare two metrics; set "
            f"prune_metric={str(stored.get('metric')).removeprefix('eval_')!r}, or {how}"
        )


def metric_name(settings: SearchSettings) -> str:
    return settings.objective.objective.metric or "compute_objective"


def check_distributions(finished: list[optuna.trial.FrozenTrial], space: SearchSpace, how: str) -> None:
    """Compare each key of the new space with its distribution in the study's latest finished trial that has it."""
    before: dict[str, BaseDistribution] = {}
    for trial in reversed(finished):  # the latest first: the distribution the study last ran with
        for name, dist in trial.distributions.items():
            before.setdefault(name, dist)
    for name, new in space.distributions.items():
        old = before.get(name)
        if old is None:
            logger.info(f"hp_space[{name!r}]: a new key; the study's earlier trials did not search it")
            continue
        problem = _incompatible(old, new)
        if problem is not None:
            raise ValueError(
                f"hp_space[{name!r}]: {problem} (the study's trials: {_show(old)}; now: {_show(new)}). Optuna "
                f"cannot continue a study with a changed distribution; change it back, or {how}"
            )
        if old != new:
            logger.info(f"hp_space[{name!r}]: range changed from {_show(old)} to {_show(new)}; the study goes on")


def _incompatible(old: BaseDistribution, new: BaseDistribution) -> str | None:
    if type(old) is not type(new):
        return f"the kind changed from {_kind(old)} to {_kind(new)}"
    if isinstance(old, CategoricalDistribution):
        assert isinstance(new, CategoricalDistribution)
        if list(old.choices) != list(new.choices):
            return f"the choices changed from {list(old.choices)} to {list(new.choices)}"
        return None
    assert isinstance(old, (IntDistribution, FloatDistribution))
    assert isinstance(new, (IntDistribution, FloatDistribution))
    if old.log != new.log:
        return f"log changed from {old.log} to {new.log}"
    if old.step != new.step:
        return f"step changed from {old.step} to {new.step}"
    return None


def _kind(dist: BaseDistribution) -> str:
    return {CategoricalDistribution: "categorical", IntDistribution: "int", FloatDistribution: "float"}.get(
        type(dist), type(dist).__name__
    )


def _show(dist: BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        return f"categorical {list(dist.choices)}"
    assert isinstance(dist, (IntDistribution, FloatDistribution))
    text = f"{_kind(dist)} {dist.low}..{dist.high}"
    if dist.log:
        text += " log"
    if dist.step is not None and not (isinstance(dist, IntDistribution) and dist.step == 1):
        text += f" step {dist.step}"
    return text


def _directions(directions: list[str]) -> str:
    return " and ".join(directions)


def _given(directions: list[str]) -> Any:
    return repr(directions[0]) if len(directions) == 1 else repr(directions)
