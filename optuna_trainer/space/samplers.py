"""Samplers by name: ``"tpe"``, ``{"name": "tpe", "seed": 0, "multivariate": true}`` or a ready `BaseSampler`."""

from __future__ import annotations

import math
from typing import Any

import optuna

from optuna_trainer.space._registry import construct, parse_named_spec
from optuna_trainer.space.search_space import SearchSpace

SAMPLERS: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "grid": optuna.samplers.GridSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "bruteforce": optuna.samplers.BruteForceSampler,
    "gp": optuna.samplers.GPSampler,
    "qmc": optuna.samplers.QMCSampler,
    "nsga2": optuna.samplers.NSGAIISampler,
}
DEFAULT_SAMPLER = "tpe"
# Samplers that avoid infeasible trials (an out-of-memory trial, training/faults.py `record_infeasible`).
CONSTRAINED_SAMPLERS = ("tpe", "gp", "nsga2")


def infeasible_constraints(trial: optuna.trial.FrozenTrial) -> tuple[float]:
    """The constraint of a trial marked infeasible by its user attribute (1.0, else 0.0): the `constraints_func`
    given to TPE, GP and NSGA-II on optuna 4, which has no `Trial.set_constraint`."""
    return (1.0 if trial.user_attrs.get("infeasible") else 0.0,)


def build_sampler(spec: Any, search_space: SearchSpace | None = None) -> optuna.samplers.BaseSampler:
    """Build a sampler.

    Args:
        spec: None (Optuna's default, TPE), a name, a dict ``{"name": ..., **kwargs}``, its JSON string, or a
            `BaseSampler` used as is.
        search_space: the declarative space; ``grid`` builds its grid from it when no ``search_space`` is given.
    """
    if isinstance(spec, optuna.samplers.BaseSampler):
        return spec
    name, kwargs = parse_named_spec(spec, "sampler", DEFAULT_SAMPLER)
    if name == "grid" and "search_space" in kwargs:
        check_grid(kwargs["search_space"], search_space)
    if name == "grid" and "search_space" not in kwargs:
        if search_space is None:
            raise ValueError(
                "sampler 'grid': needs a grid; give it as {'name': 'grid', 'search_space': {...}} or declare hp_space "
                "declaratively (a callable hp_space has no grid to read)"
            )
        kwargs["search_space"] = search_space.grid()
    if name in CONSTRAINED_SAMPLERS and "constraints_func" not in kwargs:
        if not hasattr(optuna.trial.Trial, "set_constraint"):  # optuna 4: constraints only through constraints_func
            kwargs["constraints_func"] = infeasible_constraints
    return construct("sampler", name, SAMPLERS, kwargs)


def describe_sampler(
    sampler: optuna.samplers.BaseSampler, spec: Any = None, search_space: SearchSpace | None = None
) -> str:
    """The sampler's class with the arguments it was given (Optuna's defaults for the rest), for the printed
    settings."""
    kwargs: dict[str, Any] = {}
    grid: Any = None
    if spec is not None and not isinstance(spec, optuna.samplers.BaseSampler):
        _, kwargs = parse_named_spec(spec, "sampler", DEFAULT_SAMPLER)
        grid = kwargs.pop("search_space", None)
    if isinstance(sampler, optuna.samplers.GridSampler):
        # The grid it was built from (the spec's, else the declarative space's): GridSampler exposes none.
        if grid is None and search_space is not None:
            grid = search_space.grid()
        if isinstance(grid, dict):
            kwargs["grid_points"] = math.prod(len(choices) for choices in grid.values())
    if "seed" not in kwargs and not isinstance(sampler, optuna.samplers.GridSampler):
        kwargs["seed"] = None
    return f"{type(sampler).__name__}({', '.join(f'{k}={v!r}' for k, v in sorted(kwargs.items()))})"


def is_default_sampler(spec: Any) -> bool:
    """Whether `spec` is the default sampler with at most its seed set (a seed changes the draws, not the method). A
    sampler object the user built is never called the default: its settings cannot be read."""
    if spec is None:
        return True
    if isinstance(spec, optuna.samplers.BaseSampler):
        return False
    name, kwargs = parse_named_spec(spec, "sampler", DEFAULT_SAMPLER)
    return name == DEFAULT_SAMPLER and set(kwargs) <= {"seed"}


def continued_sampler(
    spec: Any, search_space: SearchSpace | None, existing_trials: int
) -> optuna.samplers.BaseSampler | None:
    """The sampler of `spec` with its seed advanced by `existing_trials`, for a study that already has them; None when
    there is nothing to advance (no trials, no seed, or a sampler object the user built)."""
    if existing_trials == 0 or spec is None or isinstance(spec, optuna.samplers.BaseSampler):
        return None
    name, kwargs = parse_named_spec(spec, "sampler", DEFAULT_SAMPLER)
    seed = kwargs.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        return None
    return build_sampler({"name": name, **kwargs, "seed": seed + existing_trials}, search_space)


def check_grid(grid: Any, search_space: SearchSpace | None) -> None:
    """A grid given to the sampler must be a mapping of name -> non-empty list whose names are the space's keys:
    GridSampler takes anything at construction and fails in the first trial otherwise."""
    if not isinstance(grid, dict):
        raise ValueError(
            f"sampler 'grid': search_space must be a mapping of name -> list of values, got {type(grid).__name__}; "
            "e.g. {'name': 'grid', 'search_space': {'learning_rate': [1e-5, 3e-5]}}"
        )
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(
                f"sampler 'grid': search_space[{key!r}] must be a non-empty list of values, got {values!r}"
            )
    if search_space is not None and set(grid) != set(search_space.distributions):
        missing = sorted(set(search_space.distributions) - set(grid))
        extra = sorted(set(grid) - set(search_space.distributions))
        raise ValueError(
            f"sampler 'grid': its search_space does not match hp_space (missing {missing}, not in hp_space {extra}); "
            "give the same keys, or leave search_space out to take the grid from hp_space"
        )
