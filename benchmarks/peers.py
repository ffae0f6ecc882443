"""Figure 15: peers on the recorded learning curves: Syne Tune's and Ray Tune's schedulers against the project's
defaults, side by side.

Reads the curve tables `curves.py` recorded (every configuration of a discrete space trained to the end, evaluated
every 128 training samples) and replays, with no training, 30-trial searches on one worker:

- the project's defaults: TPE, `StepPercentilePruner` at equal samples and skip_duplicates (`replay.PROJECT_DEFAULT`,
  replayed by `replay.py`'s `replay_search`: Optuna's own sampler and this package's pruner, `report` then
  `should_prune` at each evaluation, a repeated configuration taking its twin's result); also with random search;
  and the defaults before the held-out check, the median pruner with and without skip_duplicates;
- Syne Tune's ASHA, Hyperband (its ASHA over 3 brackets: Syne Tune 0.16 has no other Hyperband, and no DyHPO), BOHB
  (asynchronous successive halving, stopping variant, resource = evaluations, grace 1, reduction factor 3: their
  defaults) and its MedianStoppingRule over random search. Each scheduler is driven as Syne Tune's simulator drives
  it with one worker: `suggest` a configuration, `on_trial_add`, then one `on_trial_result` per recorded evaluation
  until it answers STOP or the curve ends (`on_trial_complete`);
- Ray Tune's AsyncHyperBandScheduler (ASHA) and HyperBandScheduler (defaults but max_t: grace 1, reduction factor 4
  and 3), driven as its TuneController drives them under transformers' `backend="ray"` (`ray_search`). The ASHA
  driver is checked against Ray Tune itself (`ray_live_asha`: `tune.run` on the same configurations and curves stops
  every trial at the same evaluation).

Definitions (the same for every row): a trial that reaches its last evaluation is complete and its final accuracy
(the last recorded one) counts; a stopped trial's does not. Samples used: the training samples of every trial up to
where it stopped, as a share of the no-pruning budget (30 trials x a whole training). Regret: the table's best final
accuracy minus the best final accuracy among the completed trials, in points. Anytime: the same regret when the
search has used 10, 25, 50 and 100% of the no-pruning budget (trials in order, a trial counting once it completed
within the budget).

    python benchmarks/peers.py              # the three committed tables, 20 seeds
    python benchmarks/peers.py --seeds 5    # fewer seeds
    python benchmarks/peers.py --held-out   # the held-out fourth table alone (peers_held_out.md)
    python benchmarks/peers.py --candidates --first-seed 20  # the candidates too, on seeds 20-39

Needs `pip install "optuna-trainer[bench]"` (syne-tune and ray[tune], pinned). The live head-to-head against
transformers' Ray backend is benchmarks/ray_head_to_head.py (figure 16).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from typing import Any

sys.path[:0] = [
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
]
import curves as recorder  # noqa: E402
import replay  # noqa: E402
import tables  # noqa: E402

NAME = "peers"
TABLES = ["curves.json", "curves_n1024_seed1.json", "curves_n1024_seed2.json"]
# Issue 25's fourth table (8192 sentences, seed 3), recorded once and never used to choose a setting: `--held-out`
# replays the same methods on it alone and writes peers_held_out.md beside figure 15's peers.md.
HELD_OUT = "curves_n8192_seed3.json"
N_TRIALS = 30
BUDGETS = (10, 25, 50, 100)
WITHIN = 0.5  # points
COLUMNS = [
    "table",
    "method",
    "samples used % (median)",
    "regret median",
    "regret worst",
    "best config found (runs)",
    *[f"within {WITHIN} at {b}% (share)" for b in BUDGETS],
    *[f"regret median at {b}%" for b in BUDGETS],
]

Trial = dict[str, Any]  # config, pruned, samples, final


def project_search(
    sampler: str, row: replay.Row = replay.PROJECT_DEFAULT
) -> Callable[[dict[str, Any], int], list[Trial]]:
    def search(table: dict[str, Any], seed: int) -> list[Trial]:
        return replay.replay_search(table, row, sampler, seed, N_TRIALS)

    return search


def syne_search(kind: str) -> Callable[[dict[str, Any], int], list[Trial]]:
    def search(table: dict[str, Any], seed: int) -> list[Trial]:
        import random

        import numpy as np
        from syne_tune.backend.trial_status import Trial as SyneTrial
        from syne_tune.config_space import choice
        from syne_tune.optimizer.baselines import ASHA, BOHB, RandomSearch
        from syne_tune.optimizer.scheduler import SchedulerDecision
        from syne_tune.optimizer.schedulers.median_stopping_rule import MedianStoppingRule

        # Syne Tune's random_seed does not reach every draw (repeated runs differed without this): seed the global
        # generators too, so that a row is the same on every run.
        random.seed(seed)
        np.random.seed(seed)
        space = table["meta"]["settings"]["space"]
        # Syne Tune wants one type per categorical (warmup_steps holds 0 and 0.1): the values as strings, mapped back.
        config_space = {name: choice([str(v) for v in values]) for name, values in space.items()}
        back = {name: {str(v): v for v in values} for name, values in space.items()}
        by_config = {recorder.config_key(c["config"]): c for c in table["curves"]}
        max_t = len(table["curves"][0]["points"])
        common = {"metric": "accuracy", "do_minimize": False, "random_seed": seed}
        if kind == "ASHA":
            scheduler = ASHA(config_space, time_attr="evaluations", max_t=max_t, **common)
        elif kind == "Hyperband":
            # Syne Tune 0.16 has no synchronous Hyperband class: its Hyperband is ASHA over several brackets.
            scheduler = ASHA(config_space, time_attr="evaluations", max_t=max_t, brackets=3, **common)
        elif kind == "BOHB":
            scheduler = BOHB(config_space, time_attr="evaluations", max_t=max_t, **common)
        else:
            scheduler = MedianStoppingRule(
                RandomSearch(config_space, metrics=["accuracy"], do_minimize=False, random_seed=seed),
                time_attr="evaluations",
                metric="accuracy",
                do_minimize=False,
                random_seed=seed,
            )
        out = []
        for trial_id in range(N_TRIALS):
            suggestion = scheduler.suggest()
            trial = SyneTrial(trial_id, dict(suggestion.config), datetime.datetime.now())
            config = {name: back[name][str(suggestion.config[name])] for name in space}
            scheduler.on_trial_add(trial)
            points = by_config[recorder.config_key(config)]["points"]
            stopped, seen = False, 0
            for i, p in enumerate(points):
                seen = p["samples"]
                result = {"accuracy": p["accuracy"], "evaluations": i + 1}
                if scheduler.on_trial_result(trial, result) == SchedulerDecision.STOP and i < len(points) - 1:
                    stopped = True
                    break
            if not stopped:
                scheduler.on_trial_complete(trial, result)
            out.append(
                {
                    "config": config,
                    "pruned": stopped,
                    "samples": seen,
                    "final": None if stopped else points[-1]["accuracy"],
                }
            )
        return out

    return search


class _RayTrial:
    """What Ray Tune's schedulers read of a trial: its id, status and saving flag (hashable by identity)."""

    def __init__(self, trial_id: str, config: dict[str, Any]) -> None:
        from ray.tune.experiment import Trial as RayTrial

        self.trial_id = trial_id
        self.config = config
        self.status = RayTrial.PENDING
        self.is_saving = False
        self.progress = 0  # evaluations run


class _RayController:
    """The part of Ray Tune's TuneController its schedulers call: the trials in order, stopping a paused trial."""

    def __init__(self) -> None:
        self.stopped: set[_RayTrial] = set()
        self.trials: list[_RayTrial] = []

    def get_trials(self) -> list[_RayTrial]:
        return self.trials

    def stop_trial(self, trial: _RayTrial) -> None:
        from ray.tune.experiment import Trial as RayTrial

        trial.status = RayTrial.TERMINATED
        self.stopped.add(trial)


def ray_draws(space: dict[str, list[Any]], seed: int) -> list[dict[str, Any]]:
    """The configurations of a Ray row's 30 trials: independent uniform draws, as Ray Tune's random search."""
    import numpy as np

    rng = np.random.RandomState(seed)
    return [{name: values[rng.randint(len(values))] for name, values in space.items()} for _ in range(N_TRIALS)]


def ray_search(kind: str) -> Callable[[dict[str, Any], int], list[Trial]]:
    """Ray Tune's AsyncHyperBandScheduler (ASHA) or HyperBandScheduler on one worker, driven as its TuneController
    drives it under transformers' `hyperparameter_search(backend="ray")`: its default search algorithm (random
    draws; all 30 trials created up front, as its BasicVariantGenerator does with up to 200 pending trials), one
    trial running at a time (`choose_trial_to_run`), `on_trial_result` per recorded evaluation, PAUSE/STOP obeyed.
    The schedulers' defaults but `max_t`, set to the table's evaluations as a user sets it."""

    def search(table: dict[str, Any], seed: int) -> list[Trial]:
        import numpy as np
        from ray.tune.experiment import Trial as RayTrial
        from ray.tune.schedulers import AsyncHyperBandScheduler, HyperBandScheduler, TrialScheduler

        np.random.seed(seed)  # ASHA draws each trial's bracket from numpy's global generator
        space = table["meta"]["settings"]["space"]
        by_config = {recorder.config_key(c["config"]): c for c in table["curves"]}
        max_t = len(table["curves"][0]["points"])
        common = {"time_attr": "evaluations", "metric": "accuracy", "mode": "max", "max_t": max_t}
        scheduler = AsyncHyperBandScheduler(**common) if kind == "ASHA" else HyperBandScheduler(**common)
        controller = _RayController()
        for i, config in enumerate(ray_draws(space, seed)):
            trial = _RayTrial(str(i), config)
            scheduler.on_trial_add(controller, trial)
            controller.trials.append(trial)
        # One entry per stretch a trial ran, in the order they ran: a paused trial resumed later is two stretches.
        out: list[Trial] = []
        while True:
            trial = scheduler.choose_trial_to_run(controller)
            if trial is None:
                break
            trial.status = RayTrial.RUNNING
            points = by_config[recorder.config_key(trial.config)]["points"]
            start, action = trial.progress, TrialScheduler.CONTINUE
            while trial.progress < len(points) and action == TrialScheduler.CONTINUE:
                trial.progress += 1
                result = {"accuracy": points[trial.progress - 1]["accuracy"], "evaluations": trial.progress}
                action = scheduler.on_trial_result(controller, trial, result)
            ran = points[trial.progress - 1]["samples"] - (points[start - 1]["samples"] if start else 0)
            done = trial.progress == len(points)
            if action == TrialScheduler.PAUSE and not done:
                trial.status = RayTrial.PAUSED
            else:
                trial.status = RayTrial.TERMINATED
                if done:
                    scheduler.on_trial_complete(controller, trial, result)
                else:
                    scheduler.on_trial_remove(controller, trial)
            out.append(
                {
                    "config": trial.config,
                    "pruned": trial.status == RayTrial.TERMINATED and not done,
                    "samples": ran,
                    "final": points[-1]["accuracy"] if done else None,
                }
            )
        return out

    return search


def ray_live_asha(table: dict[str, Any], seed: int, n_trials: int = N_TRIALS) -> list[tuple[int, int]]:
    """Ray Tune itself (`tune.run`: its TuneController and AsyncHyperBandScheduler) on the first `n_trials`
    configurations of the row's draws, one trial at a time, each trial reporting its recorded curve: per trial, in the
    order they ran, its index and the evaluations it reached. The check of the driver in `ray_search("ASHA")`, whose
    first `n_trials` trials must stop at the same evaluations (tests/test_benchmarks.py; the replay runs one trial at
    a time, so a trial's fate does not depend on the trials after it)."""
    import ray
    from ray import tune
    from ray.tune.schedulers import AsyncHyperBandScheduler

    space = table["meta"]["settings"]["space"]
    configs = ray_draws(space, seed)[:n_trials]
    curves = [
        [p["accuracy"] for p in next(c for c in table["curves"] if c["config"] == config)["points"]]
        for config in configs
    ]

    def trainable(config: dict[str, Any]) -> None:
        for i, accuracy in enumerate(curves[config["trial"]]):
            tune.report({"accuracy": accuracy, "evaluations": i + 1})

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with tempfile.TemporaryDirectory() as storage:
            analysis = tune.run(
                trainable,
                config={"trial": tune.grid_search(list(range(len(curves))))},
                scheduler=AsyncHyperBandScheduler(
                    time_attr="evaluations", metric="accuracy", mode="max", max_t=len(curves[0])
                ),
                resources_per_trial={"cpu": 1},
                storage_path=storage,
                verbose=0,
            )
            # In the order they started: the order the scheduler saw them.
            trials = sorted(analysis.trials, key=lambda t: t.run_metadata.start_time)
            return [(t.config["trial"], int(t.last_result["evaluations"])) for t in trials]
    finally:
        ray.shutdown()


class RungCutPruner:
    """ASHA's stopping rule (Ray Tune's AsyncHyperBandScheduler cut) as an Optuna pruner, for the candidates only
    (`--candidates`): at each rung (min_resource x reduction_factor^k, in the reported steps) a trial stops if its
    value is below the (1 - 1/reduction_factor) quantile of the values every other trial reported there, pruned ones
    included. Optuna's SuccessiveHalvingPruner promotes only the best while a rung holds fewer than
    reduction_factor values; this does not. Not part of the library."""

    def __new__(cls, min_resource: int, reduction_factor: int) -> Any:
        import numpy as np
        import optuna

        class _RungCut(optuna.pruners.BasePruner):
            def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
                step = trial.last_step
                rung = min_resource
                while step is not None and rung < step:
                    rung *= reduction_factor
                if step is None or rung != step:
                    return False
                states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
                others = [
                    t.intermediate_values[rung]
                    for t in study.get_trials(deepcopy=False, states=states)
                    if rung in t.intermediate_values and t.number != trial.number
                ]
                if not others:
                    return False
                value = trial.intermediate_values[rung]
                cut = np.nanpercentile([*others, value], (1 - 1 / reduction_factor) * 100)
                maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
                return (
                    bool(value < cut)
                    if maximize
                    else bool(value > np.nanpercentile([*others, value], 100 / reduction_factor))
                )

        return _RungCut()


def candidate_search(spec: Any, **row: Any) -> Callable[[dict[str, Any], int], list[Trial]]:
    """A candidate default: TPE, skip_duplicates and the pruner `spec` (a spec, or a callable building a pruner);
    `row`: other `replay.Row` settings (the signal, a first trial)."""

    def search(table: dict[str, Any], seed: int) -> list[Trial]:
        pruner = spec() if callable(spec) else spec
        return replay.replay_search(
            table, replay.Row("candidate", pruner, skip_duplicates=True, **row), "tpe", seed, N_TRIALS
        )

    return search


# StepPercentilePruner at the settings figure 15 weighed (the library's default since the held-out check), spelt out so
# that the candidate rows stay what they were recorded as if the default moves.
STEP_PERCENTILE = {"name": "step_percentile", "percentile": 35.0, "n_min_trials": 2}

# The candidate defaults weighed against the peers (`--candidates`; docs/benchmarks.md, figure 15).
CANDIDATES: dict[str, Callable[[dict[str, Any], int], list[Trial]]] = {
    "candidate: TPE, median n_startup_trials=3, skip_duplicates": candidate_search(
        {"name": "median", "n_startup_trials": 3}
    ),
    "candidate: TPE, SuccessiveHalving (128 samples, factor 4), skip_duplicates": candidate_search(
        {"name": "successive_halving", "min_resource": 128, "reduction_factor": 4}
    ),
    "candidate: TPE, ASHA's rung cut (128 samples, factor 4), skip_duplicates": candidate_search(
        lambda: RungCutPruner(128, 4)
    ),
    "candidate: the median defaults, equal accuracies ordered by loss": candidate_search(
        "median", signal="accuracy, ties by loss"
    ),
    "candidate: the median defaults, the middle of the space first": candidate_search("median", first="middle"),
    "candidate: the median defaults, both": candidate_search(
        "median", signal="accuracy, ties by loss", first="middle"
    ),
    "candidate: TPE, below the 35th percentile of every trial at the step (2 others), skip_duplicates": (
        candidate_search(STEP_PERCENTILE)
    ),
}

# Weighed after the held-out check, on tables 1-3 only: `--held-out --candidates` replays the candidates set down
# before that check and not these, so the held-out table stays the record of one replay. Optuna's own multi-fidelity
# pairing (TPE with its HyperbandPruner, as Optuna's docs pair them) and the middle first with the new default.
LATER_CANDIDATES: dict[str, Callable[[dict[str, Any], int], list[Trial]]] = {
    "candidate: TPE, Hyperband (128 samples, factor 3), skip_duplicates": candidate_search(
        {"name": "hyperband", "min_resource": 128, "reduction_factor": 3}
    ),
    "candidate: the step_percentile defaults, the middle of the space first": candidate_search(
        STEP_PERCENTILE, first="middle"
    ),
}

METHODS: dict[str, Callable[[dict[str, Any], int], list[Trial]]] = {
    "project's defaults (TPE, step_percentile at samples, skip_duplicates)": project_search("tpe"),
    "project's defaults, random search": project_search("random"),
    "the defaults before the held-out check (TPE, median at samples, skip_duplicates)": project_search(
        "tpe", replay.MEDIAN_DEFAULTS
    ),
    "the same without skip_duplicates (TPE)": project_search("tpe", replay.MEDIAN_PRUNER),
    "Syne Tune ASHA": syne_search("ASHA"),
    "Syne Tune Hyperband (ASHA, 3 brackets)": syne_search("Hyperband"),
    "Syne Tune BOHB": syne_search("BOHB"),
    "Syne Tune MedianStoppingRule (random search)": syne_search("median"),
    "Ray Tune ASHA (AsyncHyperBandScheduler)": ray_search("ASHA"),
    "Ray Tune HyperBandScheduler": ray_search("HyperBand"),
}


def score(table: dict[str, Any], trials: list[Trial]) -> dict[str, Any]:
    """Samples used, regret at the end and at each budget, and whether the table's best configuration completed."""
    finals = {recorder.config_key(c["config"]): c["points"][-1]["accuracy"] for c in table["curves"]}
    best = max(finals.values())
    full = table["curves"][0]["points"][-1]["samples"]
    budget = N_TRIALS * full
    used, anytime = 0, {b: None for b in BUDGETS}
    best_found: float | None = None
    by_budget: dict[int, float | None] = {}
    for t in trials:
        used += t["samples"]
        if t["final"] is not None:
            best_found = t["final"] if best_found is None else max(best_found, t["final"])
        for b in BUDGETS:
            if used <= budget * b / 100:
                by_budget[b] = best_found
    for b in BUDGETS:
        found = by_budget.get(b)
        anytime[b] = 100 * (best - found) if found is not None else 100 * best  # nothing completed: all of it
    return {
        "used": 100 * used / budget,
        "regret": 100 * (best - (best_found if best_found is not None else 0.0)),
        "found best": any(t["final"] is not None and t["final"] == best for t in trials),
        "anytime": anytime,
    }


def summarize(
    name: str, table: dict[str, Any], seeds: list[int], methods: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    rows = []
    for method, search in (methods or METHODS).items():
        scores = [score(table, search(table, seed)) for seed in seeds]
        row: dict[str, Any] = {
            "table": name,
            "method": method,
            "samples used % (median)": round(statistics.median(s["used"] for s in scores), 1),
            "regret median": round(statistics.median(s["regret"] for s in scores), 2),
            "regret worst": round(max(s["regret"] for s in scores), 2),
            "best config found (runs)": f"{sum(s['found best'] for s in scores)}/{len(scores)}",
        }
        for b in BUDGETS:
            regrets = [s["anytime"][b] for s in scores]
            row[f"within {WITHIN} at {b}% (share)"] = round(sum(r <= WITHIN + 1e-9 for r in regrets) / len(regrets), 2)
            row[f"regret median at {b}%"] = round(statistics.median(regrets), 2)
        rows.append(row)
        print(" | ".join(str(v) for v in row.values()), flush=True)
    return rows


def methods_to_replay(*, candidates: bool, held_out: bool) -> dict[str, Callable[[dict[str, Any], int], list[Trial]]]:
    """The peers and the project's rows; with `candidates` the candidate defaults too, but on the held-out table only
    those set down before its one replay."""
    if not candidates:
        return dict(METHODS)
    return {**METHODS, **CANDIDATES, **({} if held_out else LATER_CANDIDATES)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds first_seed..first_seed+seeds-1 (20: the other seeds)"
    )
    parser.add_argument("--tables", nargs="*", default=None, help=f"default: {' '.join(TABLES)}")
    parser.add_argument("--held-out", action="store_true", help=f"{HELD_OUT} alone, the held-out check")
    parser.add_argument("--out", default=tables.DEFAULT_OUT)
    parser.add_argument(
        "--candidates",
        action="store_true",
        help="also the candidate defaults weighed against the peers (CANDIDATES, and LATER_CANDIDATES except with "
        "--held-out)",
    )
    a = parser.parse_args(argv)
    logging.getLogger("syne_tune").setLevel(logging.ERROR)  # a warning per scheduler about its default searcher
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    methods = methods_to_replay(candidates=a.candidates, held_out=a.held_out)
    if a.held_out and a.tables:
        parser.error("--held-out replays the held-out table alone: give it or --tables, not both")
    rows = []
    for name in [HELD_OUT] if a.held_out else a.tables or TABLES:
        table = replay.load_table(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", name))
        rows += summarize(name, table, list(range(a.first_seed, a.first_seed + a.seeds)), methods)
    tables.write_table(
        a.out,
        NAME
        + ("_held_out" if a.held_out else "")
        + ("_candidates" if a.candidates else "")
        + (f"_from_seed{a.first_seed}" if a.first_seed else ""),
        "Peers on the recorded curves: samples used, regret and anytime regret at 30 trials",
        COLUMNS,
        rows,
        {"command": tables.command_line()},
        [
            f"{N_TRIALS} trials on one worker, seeds {a.first_seed}-{a.first_seed + a.seeds - 1}; regret in points of final accuracy below the "
            "table's best configuration; a stopped trial's accuracy does not count",
            "project's defaults: TPE, StepPercentilePruner (percentile=35.0, n_min_trials=2) keyed by training "
            "samples, skip_duplicates (before the held-out check: MedianPruner, n_startup_trials=5); Syne Tune: its "
            "baselines' defaults (grace period 1 evaluation, reduction factor 3); Ray Tune: its schedulers' defaults "
            "(ASHA grace 1, reduction factor 4; HyperBand reduction factor 3), max_t = the table's evaluations, "
            "random search, all trials created up front",
            "a paused and resumed trial (Ray's HyperBandScheduler) counts its samples when each stretch ran",
        ],
    )
    return {"rows": rows}


if __name__ == "__main__":
    main()
