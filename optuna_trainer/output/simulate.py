"""Replay a finished study's recorded evaluation curves under other pruners (and, on a recorded discrete space,
other samplers): which setting would have saved how many training samples, and which best value it would have found.

No model is trained. Each replayed trial is a real Optuna trial of an in-memory study with the study's direction and
the candidate pruner: it reports the recorded trial's intermediate values one by one (what the search reported to its
pruner, at the same steps: training samples with the default `prune_budget`), asks `should_prune()` after each, and
stops where the pruner says. A trial that runs to its end keeps its recorded value.

What a replay cannot know: a trial the search pruned has a curve cut short. If a candidate would let it go on past
its last recorded evaluation, its value is unknown: it counts as stopped there (its samples up to there are counted),
and the row says how many such trials there were. Record full curves first (the first K trials with `pruner="none"`,
docs/search.md "Choosing a pruner on your own task") and the replay is exact for them.

Trials run in the study's own order by default; `orders=N` replays N random orders as well (a median pruner's
decisions depend on which trials came before), and the rows give the median and the worst over the orders.

With `samplers`, each sampler draws the trials itself, as a search would: only on a study whose searched values are
all categorical and whose every drawn configuration has a full recorded curve (otherwise a draw has no curve to
replay, and the row says so). As a search does by default (`skip_duplicates`, search/duplicates.py), a draw that
repeats a configuration replayed before takes that trial's evaluations, state and value and costs no sample
(`skip_duplicates=False`: it is replayed again in full).

A study's own repeats (trials with the user attribute `duplicate_of`, which trained nothing) are not replayed: they
are copies of their twins, not measurements.
"""

from __future__ import annotations

import logging
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import TrialState

from optuna_trainer.space.pruners import build_pruner, describe_pruner
from optuna_trainer.space.samplers import build_sampler
from optuna_trainer.study.attrs import read
from optuna_trainer.study.bookkeeping import copy_evaluations

logger = logging.getLogger(__name__)

DEFAULT_PRUNERS: tuple[Any, ...] = (
    "none",
    "median",
    {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 2},
    {"name": "percentile", "percentile": 25.0},
    "step_percentile",
    "successive_halving",
    "hyperband",
)


@dataclass(frozen=True)
class Recorded:
    """One finished trial of the study as the replay sees it.

    Attributes:
        number: the trial's number in the study.
        params: its values.
        curve: `(step, value)` it reported to its pruner, in order.
        full: whether it ran to its end (COMPLETE): otherwise its curve was cut short where it was pruned.
        value: its value (COMPLETE trials), None otherwise.
        samples_per_key: training samples per reported step unit (1 when steps are samples).
        samples: training samples it saw.
        max_samples: training samples it would have seen to its end.
    """

    number: int
    params: dict[str, Any]
    curve: tuple[tuple[int, float], ...]
    full: bool
    value: float | None
    samples_per_key: float
    samples: float
    max_samples: float

    def samples_at(self, index: int) -> float:
        """Training samples seen at the curve's `index`-th report."""
        return self.curve[index][0] * self.samples_per_key


@dataclass
class Replay:
    """One replay of one setting: what it ran and what it found."""

    samples: float = 0.0
    best: float | None = None
    pruned: int = 0
    completed: int = 0
    cut_short: int = 0  # let past the end of a curve the search had cut short: value unknown
    unrecorded: int = 0  # a sampler drew a configuration with no full recorded curve
    best_trial_pruned: bool = False


@dataclass
class Row:
    """A setting's result over its replays (orders or seeds)."""

    sampler: str
    pruner: str
    replays: list[Replay] = field(default_factory=list)

    def summary(self, baseline_samples: float, study_best: float | None, direction: str) -> dict[str, Any]:
        saved = [100.0 * (1 - r.samples / baseline_samples) if baseline_samples else 0.0 for r in self.replays]
        sign = 1.0 if direction == "maximize" else -1.0
        gaps = [sign * (r.best - study_best) for r in self.replays if r.best is not None and study_best is not None]
        return {
            "sampler": self.sampler,
            "pruner": self.pruner,
            "replays": len(self.replays),
            "samples saved % (median)": statistics.median(saved),
            "samples saved % (min)": min(saved),
            "best value (median)": statistics.median(r.best for r in self.replays if r.best is not None)
            if any(r.best is not None for r in self.replays)
            else None,
            "vs the study's best (median / worst)": (statistics.median(gaps), min(gaps)) if gaps else None,
            "best trial pruned (replays)": sum(r.best_trial_pruned for r in self.replays),
            "pruned / completed (median)": (
                statistics.median(r.pruned for r in self.replays),
                statistics.median(r.completed for r in self.replays),
            ),
            "cut short (max)": max(r.cut_short for r in self.replays),
            "unrecorded draws (max)": max(r.unrecorded for r in self.replays),
        }


def recorded_trials(study: optuna.Study) -> list[Recorded]:
    """The study's COMPLETE and PRUNED trials with at least one reported evaluation, in their order."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        attrs = read(t)
        if not t.intermediate_values or attrs.get("duplicate_of") is not None:
            continue
        per_step = float(attrs.get("samples_per_step") or 1)
        per_key = per_step / float(attrs.get("budget_per_step") or per_step)
        curve = tuple(sorted(t.intermediate_values.items()))
        seen = float(attrs.get("samples") or curve[-1][0] * per_key)
        planned = float(attrs.get("max_samples") or seen)
        out.append(
            Recorded(
                number=t.number,
                params=dict(t.params),
                curve=curve,
                full=t.state == TrialState.COMPLETE,
                value=t.value if t.state == TrialState.COMPLETE else None,
                samples_per_key=per_key,
                samples=seen,
                max_samples=max(planned, seen),
            )
        )
    return out


def _replay_one(
    study: optuna.Study, trial: optuna.Trial, recorded: Recorded, replay: Replay, best_number: int | None
) -> None:
    for index, (step, value) in enumerate(recorded.curve):
        trial.report(value, step)
        last = index == len(recorded.curve) - 1
        if trial.should_prune():
            # Stopped after this evaluation; a trial the search had pruned here too stops at the same place.
            replay.samples += recorded.samples_at(index) if not last or not recorded.full else recorded.samples
            replay.pruned += 1
            replay.best_trial_pruned |= recorded.number == best_number
            study.tell(trial, state=TrialState.PRUNED)
            return
    if not recorded.full:
        # Let through where the search stopped it: nothing is known beyond, so it stops here, value unknown.
        replay.samples += recorded.samples
        replay.cut_short += 1
        study.tell(trial, state=TrialState.PRUNED)
        return
    replay.samples += recorded.samples
    replay.completed += 1
    assert recorded.value is not None
    study.tell(trial, recorded.value)
    if replay.best is None or _better(recorded.value, replay.best, study.direction):
        replay.best = recorded.value


def _better(a: float, b: float, direction: optuna.study.StudyDirection) -> bool:
    return a > b if direction == optuna.study.StudyDirection.MAXIMIZE else a < b


def _quiet_study(direction: str, pruner: optuna.pruners.BasePruner, sampler: Any = None) -> optuna.Study:
    return optuna.create_study(
        directions=[optuna.study.StudyDirection[direction.upper()]],
        pruner=pruner,
        sampler=sampler or optuna.samplers.RandomSampler(),
    )


def replay_in_order(trials: Sequence[Recorded], direction: str, pruner_spec: Any, best_number: int | None) -> Replay:
    """Replay `trials` in the given order under the pruner `pruner_spec`."""
    study = _quiet_study(direction, build_pruner(pruner_spec))
    replay = Replay()
    for recorded in trials:
        _replay_one(study, study.ask(), recorded, replay, best_number)
    return replay


def categorical_space(trials: Sequence[Recorded], study: optuna.Study) -> dict[str, CategoricalDistribution] | None:
    """The study's space when every searched value is categorical (a sampler can then be replayed), else None."""
    distributions: dict[str, CategoricalDistribution] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        for name, dist in t.distributions.items():
            if not isinstance(dist, CategoricalDistribution):
                return None
            distributions.setdefault(name, dist)
    return distributions or None


def replay_sampler(
    trials: Sequence[Recorded],
    direction: str,
    space: dict[str, CategoricalDistribution],
    sampler_spec: Any,
    pruner_spec: Any,
    n_trials: int,
    best_number: int | None,
    skip_duplicates: bool = True,
) -> Replay:
    """A search of `n_trials` drawn by the sampler from the recorded configurations (full curves only); with
    `skip_duplicates`, a repeated draw takes its twin's result at no cost, as the search does."""
    by_params = {tuple(sorted(t.params.items())): t for t in trials if t.full}
    study = _quiet_study(direction, build_pruner(pruner_spec), build_sampler(sampler_spec))
    replay = Replay()
    replayed: dict[tuple[Any, ...], optuna.trial.FrozenTrial] = {}
    draws = 0
    while replay.pruned + replay.completed + replay.cut_short < n_trials and draws < 20 * n_trials:
        draws += 1
        trial = study.ask(dict[str, BaseDistribution](space))
        key = tuple(sorted(trial.params.items()))
        recorded = by_params.get(key)
        if recorded is None:
            replay.unrecorded += 1
            study.tell(trial, state=TrialState.FAIL)
            continue
        twin = replayed.get(key) if skip_duplicates else None
        if twin is not None:
            copy_evaluations(trial, twin)
            if twin.state == TrialState.PRUNED:
                replay.pruned += 1
                study.tell(trial, state=TrialState.PRUNED)
            else:
                replay.completed += 1
                study.tell(trial, twin.value)
            continue
        _replay_one(study, trial, recorded, replay, best_number)
        replayed[key] = study.trials[trial.number]
    return replay


def simulate(
    study: optuna.Study,
    pruners: Sequence[Any] = DEFAULT_PRUNERS,
    orders: int = 0,
    samplers: Sequence[Any] = (),
    seeds: int = 10,
    n_trials: int | None = None,
    skip_duplicates: bool = True,
) -> dict[str, Any]:
    """Replay `study` under each pruner (in the study's order, plus `orders` random orders) and, on a recorded
    categorical space, under each sampler x pruner over `seeds` seeds (a repeated draw free with `skip_duplicates`).
    Returns the rows (dicts) and what they are measured against."""
    if len(study.directions) > 1:
        raise ValueError(f"study {study.study_name!r} has several objectives: its trials are never pruned")
    trials = recorded_trials(study)
    if not trials:
        raise ValueError(
            f"study {study.study_name!r} has no finished trial with reported evaluations: nothing to replay"
        )
    direction = "maximize" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "minimize"
    full = [t for t in trials if t.full]
    best = _best_of(full, direction)
    # No pruning at all: every trial to its end (a trial the search pruned counts with its planned samples).
    baseline = sum(t.max_samples for t in trials)
    rows: list[Row] = []
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        for spec in pruners:
            row = Row("as recorded", describe_pruner(build_pruner(spec), spec))
            row.replays.append(replay_in_order(trials, direction, spec, best.number if best else None))
            rng = random.Random(0)
            for _ in range(orders):
                shuffled = list(trials)
                rng.shuffle(shuffled)
                row.replays.append(replay_in_order(shuffled, direction, spec, best.number if best else None))
            rows.append(row)
        space = categorical_space(trials, study) if samplers else None
        if samplers and space is None:
            logger.warning(
                "samplers: the study searched non-categorical values, so a sampler's draws have no recorded curve; "
                "only the pruners are replayed (record a discrete space with pruner='none' to compare samplers)"
            )
        for sampler in samplers if space is not None else ():
            for spec in pruners:
                label = sampler if isinstance(sampler, str) else str(sampler)
                row = Row(label, describe_pruner(build_pruner(spec), spec))
                for seed in range(seeds):
                    seeded = _seeded(sampler, seed)
                    assert space is not None
                    row.replays.append(
                        replay_sampler(
                            trials,
                            direction,
                            space,
                            seeded,
                            spec,
                            n_trials or len(trials),
                            best.number if best else None,
                            skip_duplicates,
                        )
                    )
                rows.append(row)
    finally:
        optuna.logging.set_verbosity(previous)
    study_best = best.value if best is not None else None
    return {
        "study": study.study_name,
        "direction": direction,
        "trials": len(trials),
        "full curves": len(full),
        "cut short": len(trials) - len(full),
        "no-pruning samples": baseline,
        "study best": study_best,
        "rows": [r.summary(baseline, study_best, direction) for r in rows],
    }


def _best_of(trials: Sequence[Recorded], direction: str) -> Recorded | None:
    sign = 1.0 if direction == "maximize" else -1.0
    valued = [t for t in trials if t.value is not None]
    return max(valued, key=lambda t: sign * float(t.value or 0.0)) if valued else None


def _seeded(spec: Any, seed: int) -> Any:
    if isinstance(spec, optuna.samplers.BaseSampler):
        return spec  # an object is used as given (its own seed)
    if isinstance(spec, dict):
        return {**spec, "seed": seed}
    return {"name": spec, "seed": seed}


def format_simulation(result: dict[str, Any]) -> str:
    """The replay's rows as a plain-text table, with the caveat."""
    lines = [
        f"Replay of study {result['study']!r} ({result['direction']}): {result['trials']} trials, "
        f"{result['full curves']} with full curves, {result['cut short']} cut short where the search pruned them; "
        f"no pruning would use {result['no-pruning samples']:.0f} training samples; the study's best is "
        f"{result['study best']}",
        "",
    ]
    header = [
        "sampler",
        "pruner",
        "saved % (median, min)",
        "best (median)",
        "vs best (median / worst)",
        "best pruned",
        "cut short",
    ]
    table = [header]
    for row in result["rows"]:
        gap = row["vs the study's best (median / worst)"]
        best = row["best value (median)"]
        table.append(
            [
                row["sampler"],
                row["pruner"],
                f"{row['samples saved % (median)']:.1f} ({row['samples saved % (min)']:.1f})",
                "n/a" if best is None else f"{best:.4g}",
                "n/a" if gap is None else f"{gap[0]:+.4g} / {gap[1]:+.4g}",
                f"{row['best trial pruned (replays)']}/{row['replays']}",
                str(row["cut short (max)"]),
            ]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    lines += [
        "",
        "saved: training samples against running every trial to its end. vs best: the best value found minus the "
        "study's best (in the direction that is better; 0 = found it).",
    ]
    if result["cut short"]:
        lines.append(
            f"Caveat: {result['cut short']} trial(s) were pruned by the search, so their curves stop there; a setting "
            "that would have let them go on is counted as stopping there too (their value is unknown). Record full "
            "curves (pruner='none' for the first trials) for an exact replay."
        )
    return "\n".join(lines)


__all__ = ["DEFAULT_PRUNERS", "format_simulation", "recorded_trials", "simulate"]
