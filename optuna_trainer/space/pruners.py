"""Pruners by name: ``"median"``, ``{"name": "patient", "patience": 2, "wrapped": {"name": "median"}}``, ``"none"``,
and this package's ``"step_percentile"`` (space/step_percentile.py)."""

from __future__ import annotations

import inspect
from typing import Any

import optuna

from optuna_trainer.space._registry import construct, parse_named_spec
from optuna_trainer.space.step_percentile import StepPercentilePruner

PRUNERS: dict[str, type[optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "patient": optuna.pruners.PatientPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "wilcoxon": optuna.pruners.WilcoxonPruner,
    "step_percentile": StepPercentilePruner,
    "none": optuna.pruners.NopPruner,
}
# StepPercentilePruner(percentile=35.0, n_min_trials=2): chosen on the three curve tables of docs/benchmarks.md,
# figure 15, and kept by the held-out fourth table under a rule set down before it was replayed (Optuna's own default,
# MedianPruner(n_startup_trials=5), runs 5 trials to the end first). Printed at every search start, since users are
# surprised by pruning they did not ask for.
DEFAULT_PRUNER = "step_percentile"


def build_pruner(spec: Any) -> optuna.pruners.BasePruner:
    """Build a pruner.

    Args:
        spec: None (``step_percentile``), a name, a dict ``{"name": ..., **kwargs}``, its JSON string, or a `BasePruner`.
            ``patient`` wraps another pruner given as ``wrapped`` (a spec itself; none when left out).
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
    check_resources(name, kwargs)
    return construct("pruner", name, PRUNERS, kwargs)


def check_resources(name: str, kwargs: dict[str, Any]) -> None:
    """Refuse resource settings that Optuna takes at construction and fails on only at the first pruning decision."""
    if name not in ("hyperband", "successive_halving"):
        return
    where = f"pruner {name!r}"
    low = kwargs.get("min_resource", "auto" if name == "successive_halving" else 1)
    if low != "auto" and (isinstance(low, bool) or not isinstance(low, int) or low < 1):
        raise ValueError(
            f"{where}: min_resource must be a whole number of steps >= 1 (or 'auto'), got {low!r}; it is the "
            "fewest evaluation steps a trial gets before it can be pruned"
        )
    high = kwargs.get("max_resource", "auto")
    if high != "auto" and (
        isinstance(high, bool) or not isinstance(high, int) or (isinstance(low, int) and high <= low)
    ):
        raise ValueError(f"{where}: max_resource must be 'auto' or a whole number above min_resource, got {high!r}")
    factor = kwargs.get("reduction_factor", 3)
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
        raise ValueError(f"{where}: reduction_factor must be a whole number >= 2, got {factor!r}")


# The settings the printed summary shows even when left at their defaults (they decide when pruning starts).
_SHOWN_DEFAULTS = {
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps"),
    "percentile": ("n_startup_trials", "n_warmup_steps", "interval_steps"),
    "step_percentile": ("percentile", "n_min_trials"),
}


def describe_pruner(pruner: optuna.pruners.BasePruner, spec: Any = None) -> str:
    """The pruner's class with the arguments it was built from (and the defaults that decide when it starts), for
    the printed settings. Read from the spec and the class signature: Optuna pruners expose no public settings."""
    if spec is None or isinstance(spec, optuna.pruners.BasePruner):
        if type(pruner) is PRUNERS[DEFAULT_PRUNER] and spec is None:
            spec = DEFAULT_PRUNER  # the default was built from its name
        else:
            return type(pruner).__name__  # built by the user: its settings are the user's own
    name, kwargs = parse_named_spec(spec, "pruner", DEFAULT_PRUNER)
    parameters = inspect.signature(PRUNERS[name]).parameters
    shown = {key: parameters[key].default for key in _SHOWN_DEFAULTS.get(name, ())}
    shown.update(kwargs)
    if name == "patient":
        wrapped = shown.pop("wrapped", shown.pop("wrapped_pruner", None))
        text = f"patience={shown.pop('patience')!r}"
        text += "".join(f", {k}={v!r}" for k, v in shown.items())
        inner = describe_pruner(build_pruner(wrapped), wrapped) if wrapped is not None else None
        return f"PatientPruner({text}, wrapped={inner})"
    return f"{type(pruner).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


def is_default_pruner(pruner: optuna.pruners.BasePruner, spec: Any = None) -> bool:
    """Whether `pruner`, built from `spec`, is the default, also when its default settings were spelt out (the main
    job's config does). A pruner object the user built is never called the default: its settings cannot be read."""
    return describe_pruner(pruner, spec) == describe_pruner(build_pruner(DEFAULT_PRUNER), DEFAULT_PRUNER)
