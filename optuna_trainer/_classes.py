"""Build `Optuna<Base>` classes (a mixin over a user's class) once each, findable by pickle in their module."""

from __future__ import annotations

import sys
from collections.abc import Callable


def mixed_class(
    mixin: type,
    base: type,
    registry: dict[type, type],
    module: str,
    doc: str,
    finish: Callable[[type], type] = lambda c: c,
) -> type:
    """`class Optuna<Base>(mixin, base)`, made once per `base` (kept in `registry`) and set in `module`.

    Args:
        finish: applied to the new class (e.g. `dataclass(repr=False)` for an arguments class).
    """
    if base not in registry:
        name = f"Optuna{base.__name__}"
        # Set in `module` so that pickle finds it (checkpoints pickle the arguments into training_args.bin).
        cls = finish(type(name, (mixin, base), {"__doc__": doc, "__module__": module, "__qualname__": name}))
        vars(sys.modules[module]).setdefault(name, cls)
        registry[base] = cls
    return registry[base]
