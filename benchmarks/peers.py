"""Peers on the recorded learning curves: Syne Tune's schedulers against the project's default, side by side.

Reads the curve tables `curves.py` recorded (every configuration of a discrete space trained to the end, evaluated
every 128 training samples) and replays, with no training, 30-trial searches on one worker:

- the project's default, median pruner at equal samples, with random search and with TPE (`replay.py`'s
  `replay_search`: Optuna's own sampler and pruner, `report` then `should_prune` at each evaluation);
- Syne Tune's ASHA, BOHB (both asynchronous successive halving, stopping variant, resource = evaluations, grace 1,
  reduction factor 3, their defaults) and its MedianStoppingRule over random search. Each scheduler is driven as Syne
  Tune's simulator drives it with one worker: `suggest` a configuration, `on_trial_add`, then one `on_trial_result`
  per recorded evaluation until it answers STOP or the curve ends (`on_trial_complete`).

Definitions (the same for every row): a trial that reaches its last evaluation is complete and its final accuracy
(the last recorded one) counts; a stopped trial's does not. Samples used: the training samples of every trial up to
where it stopped, as a share of the no-pruning budget (30 trials x a whole training). Regret: the table's best final
accuracy minus the best final accuracy among the completed trials, in points. Anytime: the same regret when the
search has used 10, 25, 50 and 100% of the no-pruning budget (trials in order, a trial counting once it completed
within the budget).

    python benchmarks/peers.py              # the three committed tables, 20 seeds
    python benchmarks/peers.py --seeds 5    # fewer seeds

Needs `pip install "optuna-trainer[bench]"` (syne-tune, pinned). Ray Tune's schedulers and the live Ray head-to-head
are not in this script yet.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import statistics
import sys
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


def project_search(sampler: str) -> Callable[[dict[str, Any], int], list[Trial]]:
    row = replay.Row("project's default: median (defaults)", "median")

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


METHODS: dict[str, Callable[[dict[str, Any], int], list[Trial]]] = {
    "project's default (median at samples), random": project_search("random"),
    "project's default (median at samples), TPE": project_search("tpe"),
    "Syne Tune ASHA": syne_search("ASHA"),
    "Syne Tune BOHB": syne_search("BOHB"),
    "Syne Tune MedianStoppingRule (random search)": syne_search("median"),
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


def summarize(name: str, table: dict[str, Any], seeds: list[int]) -> list[dict[str, Any]]:
    rows = []
    for method, search in METHODS.items():
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--tables", nargs="*", default=TABLES)
    parser.add_argument("--out", default=tables.DEFAULT_OUT)
    a = parser.parse_args(argv)
    logging.getLogger("syne_tune").setLevel(logging.ERROR)  # a warning per scheduler about its default searcher
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows = []
    for name in a.tables:
        table = replay.load_table(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", name))
        rows += summarize(name, table, list(range(a.seeds)))
    tables.write_table(
        a.out,
        NAME,
        "Peers on the recorded curves: samples used, regret and anytime regret at 30 trials",
        COLUMNS,
        rows,
        {"command": "python benchmarks/peers.py" + ("" if a.seeds == 20 else f" --seeds {a.seeds}")},
        [
            f"{N_TRIALS} trials on one worker, seeds 0-{a.seeds - 1}; regret in points of final accuracy below the "
            "table's best configuration; a stopped trial's accuracy does not count",
            "project's default: MedianPruner (n_startup_trials=5, n_warmup_steps=0) keyed by training samples; "
            "Syne Tune: its baselines' defaults (grace period 1 evaluation, reduction factor 3)",
        ],
    )
    return {"rows": rows}


if __name__ == "__main__":
    main()
