"""What a trial optimizes: the metric (or `compute_objective`), its direction, and the best value over evaluations."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna_trainer._files import parse_json_text

DIRECTIONS = ("minimize", "maximize")
ObjectiveValue = float | tuple[float, ...]


def metric_key(name: str) -> str:
    """`accuracy` -> `eval_accuracy`, as `Trainer` prefixes evaluation metrics."""
    return name if name.startswith("eval_") else f"eval_{name}"


def normalize_direction(direction: Any) -> str | list[str] | None:
    """Check a direction (or a list of them for several objectives) and return it in lower case."""
    if direction is None:
        return None
    if isinstance(direction, str):
        text = direction.strip()
        if text.startswith("["):
            direction = parse_json_text(text, "direction", 'write a JSON list, e.g. ["minimize", "maximize"]')
        else:
            if text.lower() not in DIRECTIONS:
                raise ValueError(f"direction: {direction!r} is not one of {list(DIRECTIONS)}")
            return text.lower()
    if isinstance(direction, Sequence) and not isinstance(direction, str):
        out = []
        for d in direction:
            if not isinstance(d, str) or d.lower() not in DIRECTIONS:
                raise ValueError(f"direction: {d!r} in {list(direction)!r} is not one of {list(DIRECTIONS)}")
            out.append(d.lower())
        if not out:
            raise ValueError("direction: the list of directions is empty")
        return out[0] if len(out) == 1 else out
    raise ValueError(f"direction: expected 'minimize', 'maximize' or a list of them, got {direction!r}")


@dataclass
class Objective:
    """Turns evaluation metrics into the value a trial reports, and keeps the best one.

    Attributes:
        metric: the metric key read from the metrics (None when `compute_objective` is given).
        compute_objective: a user function from metrics to the value (transformers' form).
        directions: one direction per objective.
    """

    metric: str | None
    compute_objective: Callable[[dict[str, float]], Any] | None
    directions: list[str]
    history: list[tuple[int, ObjectiveValue]] = field(default_factory=list)
    # The argument a missing metric is blamed on (the pruning signal is a `prune_metric` Objective).
    source_field: str = "objective_metric"

    @property
    def multi(self) -> bool:
        return len(self.directions) > 1

    def __call__(self, metrics: dict[str, float]) -> ObjectiveValue:
        if self.compute_objective is not None:
            value = self.compute_objective(dict(metrics))
        else:
            assert self.metric is not None
            if self.metric not in metrics:
                available = sorted(k for k in metrics if k.startswith("eval_")) or sorted(metrics)
                hint = " (or metric_for_best_model)" if self.source_field == "objective_metric" else ""
                raise ValueError(
                    f"{self.source_field}: {self.metric!r} is not among the evaluation metrics {available}; set "
                    f"{self.source_field}{hint} to one of them, or add it in compute_metrics"
                )
            value = metrics[self.metric]
        return self._check(value)

    def _check(self, value: Any) -> ObjectiveValue:
        if self.multi:
            if not isinstance(value, Sequence) or len(value) != len(self.directions):
                raise ValueError(
                    f"compute_objective returned {value!r}; with direction={self.directions} it must return "
                    f"{len(self.directions)} values"
                )
            return tuple(self._number(v) for v in value)
        if isinstance(value, Sequence) and not isinstance(value, str):
            raise ValueError(
                f"compute_objective returned {len(value)} values {value!r}, but direction is a single "
                f"{self.directions[0]!r}; pass direction as a list for several objectives"
            )
        return self._number(value)

    def _number(self, value: Any) -> float:
        # A bool is an int to Python, and float("0.9") parses: neither is a value the sampler should learn from.
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_numeric_scalar(value):
            source = "compute_objective" if self.compute_objective is not None else f"metric {self.metric!r}"
            raise TypeError(
                f"{source} returned {value!r} ({type(value).__name__}); the objective must be a number (a float, or "
                "one per direction), e.g. metrics['eval_accuracy']"
            )
        return float(value)

    def record(self, step: int, value: ObjectiveValue) -> None:
        self.history.append((step, value))

    def best(self) -> ObjectiveValue | None:
        """The best finite value over the evaluations (the last one for several objectives: no single best)."""
        if not self.history:
            return None
        if self.multi:
            return self.history[-1][1]
        finite = [v for _, v in self.history if isinstance(v, float) and math.isfinite(v)]
        if not finite:
            return self.history[-1][1]
        return max(finite) if self.directions[0] == "maximize" else min(finite)


def resolve_objective(
    *,
    compute_objective: Callable[[dict[str, float]], Any] | None,
    objective_metric: str | None,
    metric_for_best_model: str | None,
    greater_is_better: bool | None,
    direction: Any,
    has_compute_metrics: bool = True,
) -> tuple[Objective, str]:
    """Decide what to optimize and in which direction; say where each choice came from.

    The chain: `compute_objective`, then `objective_metric`, then `metric_for_best_model` (only when the user chose
    it), then `eval_accuracy` when the trainer has `compute_metrics`, else `eval_loss` (what evaluation returns
    without it; transformers' search optimizes the loss then too).

    Returns:
        The `Objective` and a one-line description of its source (for the printed settings).
    """
    directions = normalize_direction(direction)
    if compute_objective is not None:
        if directions is None:
            # transformers' hyperparameter_search defaults to "minimize"; a drop-in keeps that.
            directions = "minimize"
            source = "compute_objective (direction defaults to minimize, as in transformers)"
        else:
            source = "compute_objective"
        dirs = directions if isinstance(directions, list) else [directions]
        return Objective(metric=None, compute_objective=compute_objective, directions=dirs), source

    if isinstance(directions, list):
        raise ValueError(
            f"direction: {directions} names {len(directions)} objectives; several objectives need a "
            "compute_objective that returns one value per direction"
        )
    if objective_metric:
        metric, source = metric_key(objective_metric), "objective_metric"
    elif metric_for_best_model:
        metric, source = metric_key(metric_for_best_model), "metric_for_best_model"
    elif has_compute_metrics:
        metric, source = "eval_accuracy", "default with compute_metrics (eval_accuracy)"
    else:
        metric, source = "eval_loss", "default without compute_metrics (eval_loss, as in transformers)"

    # What the metric's own convention says: greater_is_better when it is metric_for_best_model, else the
    # TrainingArguments rule (names ending in "loss" are minimized).
    expected: str | None = None
    why = ""
    if metric_for_best_model and metric == metric_key(metric_for_best_model) and greater_is_better is not None:
        expected = "maximize" if greater_is_better else "minimize"
        why = f"greater_is_better={greater_is_better} for metric_for_best_model={metric_for_best_model!r}"
    elif metric.endswith("loss"):
        expected, why = "minimize", f"{metric!r} is a loss"
    if directions is None:
        directions = expected or ("minimize" if metric.endswith("loss") else "maximize")
    elif expected is not None and directions != expected:
        hint = (
            " (no compute_metrics: evaluation returns only the loss; pass compute_metrics= to maximize a metric)"
            if source.startswith("default without")
            else ""
        )
        raise ValueError(f"direction: {directions!r} contradicts {why}; use direction={expected!r}{hint}")
    return Objective(metric=metric, compute_objective=None, directions=[directions]), f"{metric} ({source})"


def resolve_prune_signal(prune_metric: str | None, objective: Objective) -> Objective | None:
    """The pruning signal of `prune_metric` (None: the objective itself is reported).

    Its direction follows transformers' rule for `metric_for_best_model`: names ending in "loss" are minimized, others
    maximized; the pruning callback negates it where that is not the study's direction.
    """
    if not prune_metric or objective.multi:
        return None
    metric = metric_key(prune_metric)
    if metric == objective.metric:
        return None
    direction = "minimize" if metric.endswith("loss") else "maximize"
    return Objective(metric=metric, compute_objective=None, directions=[direction], source_field="prune_metric")


def is_finite(value: Any) -> bool:
    """Whether an objective value (a number, or a tuple of them for several objectives) is finite."""
    if isinstance(value, tuple):
        return all(is_finite(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_numeric_scalar(value: Any) -> bool:
    """A numpy or torch scalar (what metrics often hold), not a string or None."""
    return hasattr(value, "item") and getattr(value, "ndim", 0) == 0 and not isinstance(value, (str, bytes))
