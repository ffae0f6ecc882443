"""Search-level control: the user's own values as the first trial, and rules that end a search early.

- `enqueue_arguments`: the arguments' (and the model config's) current values of the searched keys are queued as
  trial 0 of a new study (`Study.enqueue_trial`), so a search never returns worse than where the user started.
- `target_value`: no new trial starts once a finished trial reached the value.
- `trials_without_improvement`: no new trial starts after K finished trials in a row (COMPLETE or PRUNED, in the
  order they finished) did not beat the best value before them.

The stop rules are read from the study under the claim lock before every trial (search/loop.py), so they hold for every
worker of a shared study, and for a study continued later.
"""

from __future__ import annotations

import logging
import math
from typing import Any, cast

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from optuna_trainer.space.search_space import MODEL_PREFIX, SearchSpace
from optuna_trainer.study.attrs import TrialAttrs
from optuna_trainer.training.adapters import PEFT_PREFIX

logger = logging.getLogger(__name__)


def _fits(dist: BaseDistribution, value: Any) -> bool:
    """Whether `value` is a point of `dist` (what `enqueue_trial` would use as is)."""
    if isinstance(dist, CategoricalDistribution):
        return any(type(value) is type(c) and value == c for c in dist.choices)
    if isinstance(dist, (FloatDistribution, IntDistribution)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if isinstance(dist, IntDistribution) and int(value) != value:
            return False
        if not dist.low <= value <= dist.high:
            return False
        step = dist.step
        return step is None or math.isclose((value - dist.low) / step, round((value - dist.low) / step))
    return False


def current_values(keys: set[str], args: Any, model: Any) -> tuple[dict[str, Any], list[str]]:
    """The current value of each searched key (argument field or `model.<attribute>`), and the keys left out."""
    config = getattr(model, "config", None)
    values: dict[str, Any] = {}
    left: list[str] = []
    for key in sorted(keys):
        if key.startswith(PEFT_PREFIX):
            left.append(f"{key} (an adapter has no value before the search)")
        elif key.startswith(MODEL_PREFIX):
            attr = key[len(MODEL_PREFIX) :]
            if config is not None and hasattr(config, attr):
                values[key] = getattr(config, attr)
            else:
                left.append(f"{key} (the model config has no such attribute)")
        elif hasattr(args, key):
            values[key] = getattr(args, key)
        else:
            left.append(f"{key} (no such field)")
    return values, left


def enqueue_arguments(study: optuna.Study, space: Any, keys: set[str], args: Any, model: Any) -> str | None:
    """Queue the current values as the study's first trial; return a note for the printed settings."""
    if study.trials:
        return None  # a study that has trials started earlier: its first trial was queued then
    if isinstance(study.sampler, optuna.samplers.GridSampler):
        return "enqueue_arguments: the grid runs every point anyway; nothing queued"
    values, left = current_values(keys, args, model)
    if isinstance(space, SearchSpace):
        for key in list(values):
            dist = space.distributions.get(key)
            if dist is not None and not _fits(dist, values[key]):
                left.append(f"{key}={values.pop(key)!r} (outside the space)")
    if not values:
        return f"enqueue_arguments: no searched key has a value inside the space; nothing queued ({', '.join(left)})"
    study.enqueue_trial(values, user_attrs=cast(dict[str, Any], TrialAttrs(enqueued="arguments")), skip_if_exists=True)
    rest = f"; sampled: {', '.join(left)}" if left else ""
    return f"enqueue_arguments: trial 0 runs the arguments' own values {values}{rest}"


class StopRules:
    """`target_value` and `trials_without_improvement` as one check of the study.

    Args:
        direction: the study's direction (one objective).
        target_value: stop once a finished trial's value reaches this.
        trials_without_improvement: stop after this many finished trials in a row that did not improve the best.
    """

    def __init__(self, direction: str, target_value: float | None, trials_without_improvement: int | None) -> None:
        self.maximize = direction == "maximize"
        self.target_value = target_value
        self.patience = trials_without_improvement

    @property
    def active(self) -> bool:
        return self.target_value is not None or self.patience is not None

    def _better(self, value: float, best: float | None) -> bool:
        return best is None or (value > best if self.maximize else value < best)

    def reason(self, study: optuna.Study) -> str | None:
        """Why no new trial should start, or None."""
        finished = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if t.datetime_complete is not None
        ]
        finished.sort(key=lambda t: (t.datetime_complete, t.number))
        if self.target_value is not None:
            for t in finished:
                if t.state == TrialState.COMPLETE and t.value is not None:
                    reached = t.value >= self.target_value if self.maximize else t.value <= self.target_value
                    if reached:
                        return f"target_value={self.target_value} reached by trial {t.number} (value {t.value:.6g})"
        if self.patience is not None:
            best: float | None = None
            since = 0
            for t in finished:
                if t.state == TrialState.COMPLETE and t.value is not None and self._better(t.value, best):
                    best, since = t.value, 0
                else:
                    since += 1
            if since >= self.patience:
                shown = "none yet" if best is None else f"{best:.6g}"
                return (
                    f"trials_without_improvement={self.patience}: the last {since} finished trials did not improve "
                    f"the best value ({shown})"
                )
        return None


__all__ = ["StopRules", "current_values", "enqueue_arguments"]
