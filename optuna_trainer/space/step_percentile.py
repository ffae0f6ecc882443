"""`StepPercentilePruner`: prune a trial that is behind the trials that reached the same step, pruned ones included.

Optuna's `PercentilePruner` (and `MedianPruner`, its 50th percentile) compares a trial with COMPLETE trials only, and
prunes nothing until `n_startup_trials` of them completed: with the default 5, the first five trials of every search
train to the end whatever they show (17% of a 30-trial budget). ASHA's rung cut (Ray Tune, Syne Tune) counts every
trial that reached the rung, stopped ones included, and starts with the second trial. This pruner takes that count
and keeps the median pruner's decision at every evaluation: at each reported step, a trial whose best value so far is
below the `percentile` of the values every other trial (COMPLETE or PRUNED) reported at that same step is pruned, once
at least `n_min_trials` of them did. Under `prune_budget="samples"` a step is a count of training samples, so trials
with other batch sizes are compared at equal budget.

Measured on the recorded curve tables (docs/benchmarks.md, figure 15: `peers.py --candidates`) with TPE and
skip_duplicates, `percentile=35, n_min_trials=2` found the table's best accuracy (median regret 0) on all three tables
and both seed sets, where the median pruner's median regret was 0.34-0.69 point on two of them, for -1.7 to +2.9
points of the no-pruning budget.
"""

from __future__ import annotations

import math

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

_COMPARED = (TrialState.COMPLETE, TrialState.PRUNED)


class StepPercentilePruner(optuna.pruners.BasePruner):
    """Prune a trial whose best intermediate value is worse than the `percentile` of the other trials' values at the
    same step (COMPLETE and PRUNED trials), once at least `n_min_trials` of them reported that step.

    Args:
        percentile: 0 < percentile < 100, the share of the other trials' values a trial must not fall below (when
            maximizing; when minimizing, above the mirrored one). Higher prunes more.
        n_min_trials: how many other trials must have reported the step before it can prune there (>= 1).
    """

    def __init__(self, percentile: float = 35.0, n_min_trials: int = 2) -> None:
        if not 0.0 < percentile < 100.0:
            raise ValueError(f"percentile must be above 0 and below 100, got {percentile!r}")
        if n_min_trials < 1:
            raise ValueError(f"n_min_trials must be at least 1, got {n_min_trials!r}")
        self._percentile = float(percentile)
        self._n_min_trials = n_min_trials

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        own = [v for v in trial.intermediate_values.values() if not math.isnan(v)]
        if not own:
            return True  # only NaN so far: as Optuna's percentile pruner, which prunes a NaN trial
        others = [
            t.intermediate_values[step]
            for t in study.get_trials(deepcopy=False, states=_COMPARED)
            if t.number != trial.number
            and step in t.intermediate_values
            and not math.isnan(t.intermediate_values[step])
        ]
        if len(others) < self._n_min_trials:
            return False
        if study.direction == StudyDirection.MAXIMIZE:
            return bool(max(own) < np.percentile(others, self._percentile))
        return bool(min(own) > np.percentile(others, 100.0 - self._percentile))


__all__ = ["StepPercentilePruner"]
