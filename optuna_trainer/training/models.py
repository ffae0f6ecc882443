"""Per-trial models: config values from `model.<attribute>` keys, and the initial weights of a `model=` trainer."""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)


def apply_config_values(model: nn.Module, values: dict[str, Any]) -> nn.Module:
    """Return a model whose config carries `values`, with the same weights.

    Modules read most config values when they are built (a dropout probability becomes an `nn.Dropout`), so setting
    the attribute on a built model would change nothing: the model is rebuilt from the updated config and the weights
    are copied over.
    """
    if not values:
        return model
    config = copy.deepcopy(model.config)
    for attr, value in values.items():
        setattr(config, attr, value)
    rebuilt = type(model)(config)
    try:
        rebuilt.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"hp_space: rebuilding {type(model).__name__} with {values} changed its weights "
            f"({str(err).splitlines()[0]}); only search config values that keep the weights' shapes"
        ) from None
    return rebuilt.to(_device_of(model))


def check_model_values(model: nn.Module, values: dict[str, list[Any]]) -> None:
    """Raise `ValueError`, naming the key, for any `model.<attribute>` value the model could not take: one its config
    refuses or of another type than the attribute holds, a non-finite number, or one that changes the shape of a
    weight (`num_hidden_layers`, `hidden_size`: the initial weights could not be kept).

    Args:
        model: the model the trials start from.
        values: config attribute -> the values to try (a categorical's choices, a range's ends).

    Each value is tried alone on a copy of the config, and the model is built from it on the meta device: no memory
    is used and no weights are initialized.
    """
    config = getattr(model, "config", None)
    if config is None:
        return
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    for attr, candidates in values.items():
        key = f"model.{attr}"
        current = getattr(config, attr, None)
        for value in candidates:
            _check_value_type(key, current, value)
            trial_config = copy.deepcopy(config)
            try:
                setattr(trial_config, attr, value)
                with torch.device("meta"):
                    rebuilt = type(model)(trial_config)
            except Exception as err:  # noqa: BLE001 - whatever the config or a module refuses, named by its key
                raise ValueError(
                    f"hp_space[{key!r}]: {type(model).__name__} cannot take {value!r}: {type(err).__name__}: "
                    f"{str(err).splitlines()[0] if str(err) else ''}"
                ) from None
            changed = [
                f"{name} {shapes[name]} -> {tuple(t.shape)}"
                for name, t in rebuilt.state_dict().items()
                if name in shapes and tuple(t.shape) != shapes[name]
            ]
            added = sorted(set(rebuilt.state_dict()) ^ set(shapes))
            if changed or added:
                what = "; ".join(changed[:3]) or f"weights {added[:3]} appear or disappear"
                raise ValueError(
                    f"hp_space[{key!r}]: {value!r} changes the model's weights ({what}); every trial starts from the "
                    "initial weights, so only search config values that keep their shapes (dropout, not layers)"
                )


def _check_value_type(key: str, current: Any, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"hp_space[{key!r}]: {value!r} is not a finite number")
    if current is None:
        return
    if isinstance(current, bool):
        fits = isinstance(value, bool)
    elif isinstance(current, (int, float)):
        fits = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float):
            fits = value.is_integer()
    elif isinstance(current, str):
        fits = isinstance(value, str)
    else:
        return
    if not fits:
        raise ValueError(
            f"hp_space[{key!r}]: {value!r} ({type(value).__name__}) does not fit the attribute, which holds "
            f"{current!r} ({type(current).__name__})"
        )


class InitialModel:
    """Keeps a `model=` trainer's initial weights on the CPU and hands out a fresh copy for every trial.

    transformers refuses to search without `model_init`; this restores the same starting point for each trial.
    """

    def __init__(self, model: nn.Module) -> None:
        self.device = _device_of(model)
        self.template = model.to("cpu")

    def __call__(self) -> nn.Module:
        return copy.deepcopy(self.template)

    def restore(self) -> nn.Module:
        """The original object, back on its device (after the search)."""
        return self.template.to(self.device)


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")
