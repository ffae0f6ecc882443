"""Samplers by name: ``"tpe"``, ``{"name": "tpe", "seed": 0, "multivariate": true}`` or a ready `BaseSampler`."""

from __future__ import annotations

from typing import Any

import optuna

from ._registry import construct, parse_named_spec
from .search_space import SearchSpace

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
    if name == "grid" and "search_space" not in kwargs:
        if search_space is None:
            raise ValueError(
                "sampler 'grid': needs a grid; give it as {'name': 'grid', 'search_space': {...}} or declare hp_space "
                "declaratively (a callable hp_space has no grid to read)"
            )
        kwargs["search_space"] = search_space.grid()
    return construct("sampler", name, SAMPLERS, kwargs)


def describe_sampler(sampler: optuna.samplers.BaseSampler) -> str:
    """The sampler's class and its seed if it has one, for the printed settings."""
    seed = getattr(sampler, "_seed", None)
    return type(sampler).__name__ + (f"(seed={seed})" if seed is not None else "")
