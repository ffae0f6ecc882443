"""Pruners by name: ``"median"``, ``{"name": "patient", "patience": 2, "wrapped": {"name": "median"}}``, ``"none"``."""

from __future__ import annotations

from typing import Any

import optuna

from ._registry import construct, parse_named_spec

PRUNERS: dict[str, type[optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "patient": optuna.pruners.PatientPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "wilcoxon": optuna.pruners.WilcoxonPruner,
    "none": optuna.pruners.NopPruner,
}
# Optuna's own default (MedianPruner(n_startup_trials=5, n_warmup_steps=0)); printed at every search start, since
# users are surprised by pruning they did not ask for.
DEFAULT_PRUNER = "median"


def build_pruner(spec: Any) -> optuna.pruners.BasePruner:
    """Build a pruner.

    Args:
        spec: None (``median``), a name, a dict ``{"name": ..., **kwargs}``, its JSON string, or a `BasePruner`.
            ``patient`` wraps another pruner given as ``wrapped`` (a spec itself; default ``median``).
    """
    if isinstance(spec, optuna.pruners.BasePruner):
        return spec
    name, kwargs = parse_named_spec(spec, "pruner", DEFAULT_PRUNER)
    if name == "patient":
        if "wrapped" in kwargs and "wrapped_pruner" in kwargs:
            raise ValueError("pruner 'patient': give 'wrapped' or 'wrapped_pruner', not both")
        wrapped = kwargs.pop("wrapped", kwargs.pop("wrapped_pruner", None))
        kwargs["wrapped_pruner"] = None if wrapped is None else build_pruner(wrapped)
        if "patience" not in kwargs:
            raise ValueError("pruner 'patient': 'patience' is required, e.g. {'name': 'patient', 'patience': 2}")
    return construct("pruner", name, PRUNERS, kwargs)


def describe_pruner(pruner: optuna.pruners.BasePruner) -> str:
    """The pruner's class with its main settings, for the printed settings."""
    if isinstance(pruner, optuna.pruners.PercentilePruner):  # MedianPruner is a PercentilePruner
        return (
            f"{type(pruner).__name__}(n_startup_trials={pruner._n_startup_trials}, "
            f"n_warmup_steps={pruner._n_warmup_steps}, interval_steps={pruner._interval_steps})"
        )
    if isinstance(pruner, optuna.pruners.PatientPruner):
        return f"PatientPruner(patience={pruner._patience}, wrapped={describe_pruner(pruner._wrapped_pruner) if pruner._wrapped_pruner else None})"
    return type(pruner).__name__
