"""Build an Optuna object from a name and keyword arguments, with errors that list what is valid."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

from optuna_trainer._files import parse_json_text


def parse_named_spec(spec: Any, what: str, default: str) -> tuple[str, dict[str, Any]]:
    """Turn ``"tpe"``, ``{"name": "tpe", "seed": 0}`` or its JSON string into ``(name, kwargs)``."""
    if spec is None:
        return default, {}
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("{"):
            spec = parse_json_text(text, what, f'fix the JSON there, e.g. {{"name": "{default}", "seed": 0}}')
        else:
            return text.lower(), {}
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"{what}: expected a name, a dict with 'name' and keyword arguments, or an Optuna object; "
            f"got {type(spec).__name__}"
        )
    kwargs = dict(spec)
    name = kwargs.pop("name", None)
    if not isinstance(name, str):
        raise ValueError(f"{what}: the dict needs a 'name' key, e.g. {{'name': '{default}'}}; got {dict(spec)!r}")
    return name.lower(), kwargs


def construct(what: str, name: str, registry: Mapping[str, type], kwargs: dict[str, Any]) -> Any:
    """Construct ``registry[name](**kwargs)``, checking the name and the keyword names first."""
    if name not in registry:
        raise ValueError(f"{what}: unknown name {name!r}; valid names: {sorted(registry)}")
    cls = registry[name]
    params = inspect.signature(cls).parameters
    valid = [p for p, v in params.items() if v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"{what} {name!r}: unknown argument(s) {unknown}; {cls.__name__} takes {valid}")
    for key, value in kwargs.items():
        check_type(what, name, key, value, params[key].default)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        # Optuna validates its arguments at construction; keep its message and say where it came from.
        message = str(err).rstrip(".")
        raise ValueError(f"{what} {name!r}: {message}; {cls.__name__} takes {inspect.signature(cls)}") from None


def check_type(what: str, name: str, key: str, value: Any, default: Any) -> None:
    """Refuse a value of another kind than the argument's default (`n_startup_trials="1"`): Optuna takes it at
    construction and fails only when the sampler or pruner first uses it, in the middle of a trial."""
    if isinstance(default, bool):
        fits = isinstance(value, bool)
        expected = "true or false"
    elif isinstance(default, int):
        fits = isinstance(value, int) and not isinstance(value, bool)
        expected = "a whole number"
    elif isinstance(default, float):
        fits = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        expected = "a finite number"
    else:
        return  # None, a string choice or an object: Optuna checks those itself
    if not fits:
        raise ValueError(
            f"{what} {name!r}: {key} must be {expected} (its default is {default!r}), got {value!r} "
            f"({type(value).__name__})"
        )
