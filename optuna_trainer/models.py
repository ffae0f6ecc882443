"""Per-trial models: config values from `model.<attribute>` keys, and the initial weights of a `model=` trainer."""

from __future__ import annotations

import copy
import logging
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
