"""Replay searches over recorded learning curves: which pruner saves most training at equal accuracy.

Reads the curves `curves.py` recorded (every configuration of a discrete space trained to the end, evaluated at
equal sample counts) and replays, in seconds, searches with Optuna's own samplers and pruners: each trial asks the
sampler for a configuration (`suggest_categorical` over the table's space), reports that configuration's recorded
evaluations one by one to the pruner, and stops where the pruner says. No model is trained.

Every row scores a completed trial by its final accuracy (the accuracy at the end of its training), so rows differ
by their pruning alone. Per row, over the seeds: training samples saved against no pruning (same sampler, same
seed; median and spread), the best final accuracy found against no pruning (median and worst difference, in points)
and how often the table's best configuration was pruned when the search drew it.

    python benchmarks/replay.py                         # benchmarks/results/curves.json, 20 seeds, 30 trials
    python benchmarks/replay.py --first-seed 20         # the same rows on 20 other seeds (a held-out check)
    python benchmarks/replay.py --grid --seeds 40       # more settings near the default, on 40 seeds at once
    python benchmarks/replay.py --live 2                # and check the replay against 2 live searches
    python benchmarks/replay.py --quick                 # CI: the --quick curves (records them if missing)

`--live K` runs K real searches (OptunaTrainer, the same model, data and space, a few trials each) and compares
them trial by trial with the replay of the same sampler, pruner and seed: the configurations drawn, the states, where
each pruned trial stopped, and the final accuracies.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

# benchmarks/ (its shared modules) and the repository root (tests.support: the tiny models and recorders)
sys.path[:0] = [
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
]
import curves as recorder  # noqa: E402
import tables  # noqa: E402
import tasks  # noqa: E402

NAME = "pruning_curves"
TARGET_SAVED = 50.0  # % of training samples saved against no pruning (median over seeds)
TARGET_POINTS = 0.5  # median best accuracy within this many points of no pruning

COLUMNS = [
    "sampler",
    "pruner",
    "pruned on",
    "samples saved % (median [min, max])",
    "best accuracy vs none, points (median / worst)",
    "best config pruned (runs)",
    "target met",
]


@dataclass(frozen=True)
class Row:
    """One pruner setting of the table."""

    label: str
    spec: Any  # the pruner as a user writes it in OptunaTrainingArguments
    # "accuracy", "loss" (prune_metric) or "accuracy, ties by loss" (a candidate only: the pruner sees the accuracy
    # less TIE_WEIGHT x the loss, which orders equal accuracies by their loss and never reorders unequal ones)
    signal: str = "accuracy"
    budget: str = "samples"  # "samples" or "steps" (prune_budget)
    # "samples": every trial evaluates at the table's equal sample counts (what OptunaTrainer does with its
    # arguments' eval_steps). "fixed steps": every trial evaluates every `fixed_eval_steps(table)` optimizer steps
    # whatever its batch, as transformers' search does with an integer eval_steps (its default: logging_steps), so
    # a larger batch evaluates at more samples and less often.
    schedule: str = "samples"
    # The project's skip_duplicates (search/duplicates.py): a trial drawing the configuration of a finished trial of
    # its study takes that trial's evaluations, state and value and trains no sample. transformers' search has none.
    skip_duplicates: bool = False
    # A candidate only: "middle", the middle value of each key's choices enqueued as the first trial (a sensible
    # start, as the user's own values are with enqueue_arguments).
    first: str | None = None


# Accuracy moves by 1/436 (the dev subset) and the loss stays below 2: 1e-4 x the loss is below half a step.
TIE_WEIGHT = 1e-4


def pruning_value(p: dict[str, Any], signal: str) -> float:
    """What the pruner sees of a recorded evaluation, oriented (the study maximizes)."""
    if signal == "accuracy":
        return float(p["accuracy"])
    if signal == "loss":
        return -float(p["loss"])
    return float(p["accuracy"]) - TIE_WEIGHT * float(p["loss"])


def middle(space: dict[str, list[Any]]) -> dict[str, Any]:
    """The middle choice of every key (the upper one of two)."""
    return {name: choices[len(choices) // 2] for name, choices in space.items()}


# Optuna's MedianPruner keyed by training samples, every trial trained: the project's default pruner until figure
# 15's held-out check (figure 10's pruner rows differ by their pruning alone, and keep the label they were recorded
# under).
MEDIAN_PRUNER = Row("project's default: median (defaults)", "median")
# The same pruner with skip_duplicates (a repeat trains nothing): the defaults figure 15 first measured.
MEDIAN_DEFAULTS = Row("project's defaults: median (defaults) and skip_duplicates", "median", skip_duplicates=True)
# The project's defaults as a search runs them since the held-out check: StepPercentilePruner's defaults and
# skip_duplicates.
PROJECT_DEFAULT = Row(
    "project's defaults: step_percentile (defaults) and skip_duplicates", "step_percentile", skip_duplicates=True
)

# transformers' search with an integer eval_steps, its default: the same steps for every trial, keyed by step.
TRANSFORMERS_DEFAULT = (
    "transformers' default setting: median (defaults), eval_steps fixed in optimizer steps, step keys"
)
# The same pruner and keys with evaluations moved to equal samples (transformers does that only when eval_steps is
# a fraction of training): isolates what the step keys alone do.
TRANSFORMERS_EQUAL_SAMPLES = "transformers' median (defaults), step keys, evaluations at equal samples"


def transformers_rows() -> list[Row]:
    return [
        Row(TRANSFORMERS_DEFAULT, "median", "accuracy", "steps", "fixed steps"),
        Row(TRANSFORMERS_EQUAL_SAMPLES, "median", "accuracy", "steps"),
    ]


def fixed_eval_steps(table: dict[str, Any]) -> int:
    """transformers' evaluation interval on this table: the table's sample spacing at the smallest batch (eval_steps=16
    for batch 8 at 128 samples), the one fixed interval whose evaluations the table holds for every batch (a batch-32
    trial then evaluates every 512 samples)."""
    s = table["meta"]["settings"]
    return int(s["eval_samples"]) // min(s["space"]["per_device_train_batch_size"])


def evaluations(table: dict[str, Any], points: list[dict[str, Any]], row: Row) -> list[dict[str, Any]]:
    """The recorded evaluations a trial of this row gets: all of them, or (fixed steps) those at multiples of the
    fixed interval, and the end of training."""
    if row.schedule == "samples":
        return points
    every = fixed_eval_steps(table)
    return [p for i, p in enumerate(points) if p["step"] % every == 0 or i == len(points) - 1]


def rows() -> list[Row]:
    return [
        Row("none", "none"),
        *transformers_rows(),
        MEDIAN_PRUNER,
        MEDIAN_DEFAULTS,
        Row("median (defaults)", "median", "loss"),
        Row("percentile 40 (defaults)", {"name": "percentile", "percentile": 40.0}),
        Row("percentile 25 (defaults)", {"name": "percentile", "percentile": 25.0}),
        Row("percentile 25 (defaults)", {"name": "percentile", "percentile": 25.0}, "loss"),
        Row("successive halving (defaults)", "successive_halving"),
        Row("successive halving (defaults)", "successive_halving", "loss"),
        Row("hyperband (defaults)", "hyperband"),
        Row("hyperband (defaults)", "hyperband", "loss"),
        Row(
            "successive halving, min_resource=256 samples",
            {"name": "successive_halving", "min_resource": 256},
            "loss",
        ),
        Row(
            "hyperband, min_resource=128 samples, reduction_factor=3",
            {"name": "hyperband", "min_resource": 128, "reduction_factor": 3},
            "loss",
        ),
    ]


def grid_rows() -> list[Row]:
    """The second grid of figure 10 (`--grid`): start-up trials, percentile and warm-up around the default, against
    transformers' row."""
    median = "median, n_startup_trials="
    return [
        Row("none", "none"),
        *transformers_rows(),
        MEDIAN_PRUNER,
        *(Row(f"{median}{n}", {"name": "median", "n_startup_trials": n}) for n in (3, 4, 8)),
        Row("median, n_min_trials=3", {"name": "median", "n_min_trials": 3}),
        Row(
            f"{median}3, n_warmup_steps=128 samples", {"name": "median", "n_startup_trials": 3, "n_warmup_steps": 128}
        ),
        Row(
            f"{median}3, n_warmup_steps=256 samples", {"name": "median", "n_startup_trials": 3, "n_warmup_steps": 256}
        ),
        Row("percentile 40 (defaults)", {"name": "percentile", "percentile": 40.0}),
        Row("percentile 40, n_startup_trials=8", {"name": "percentile", "percentile": 40.0, "n_startup_trials": 8}),
        Row("percentile 45 (defaults)", {"name": "percentile", "percentile": 45.0}),
        *(
            Row(
                f"percentile 45, n_startup_trials={n}",
                {"name": "percentile", "percentile": 45.0, "n_startup_trials": n},
            )
            for n in (3, 4)
        ),
        Row("patient (patience 1) over median", {"name": "patient", "patience": 1, "wrapped": {"name": "median"}}),
        Row(f"{median}3", {"name": "median", "n_startup_trials": 3}, "loss"),
        Row("percentile 40 (defaults)", {"name": "percentile", "percentile": 40.0}, "loss"),
    ]


def load_table(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        table = json.load(f)
    space = table["meta"]["settings"]["space"]
    expected = len(recorder.configurations(space))
    if len(table["curves"]) != expected:
        raise SystemExit(f"{path} holds {len(table['curves'])} of the space's {expected} configurations; finish it")
    return table


def replay_search(
    table: dict[str, Any], row: Row, sampler_name: str, seed: int, n_trials: int
) -> list[dict[str, Any]]:
    """One search over the table: per trial its configuration, state, samples seen and final accuracy."""
    import optuna

    from optuna_trainer.space.pruners import build_pruner
    from optuna_trainer.space.samplers import build_sampler
    from optuna_trainer.study.bookkeeping import copy_evaluations

    space = table["meta"]["settings"]["space"]
    by_config = {recorder.config_key(c["config"]): c for c in table["curves"]}
    study = optuna.create_study(
        direction="maximize",
        sampler=build_sampler({"name": sampler_name, "seed": seed}),
        pruner=build_pruner(row.spec),
        study_name=f"replay-{seed}",
    )
    if row.first == "middle":
        study.enqueue_trial(middle(space))
    out: list[dict[str, Any]] = []
    for _ in range(n_trials):
        trial = study.ask()
        config = {name: trial.suggest_categorical(name, choices) for name, choices in space.items()}
        points = by_config[recorder.config_key(config)]["points"]
        twin = next((i for i, t in enumerate(out) if t["config"] == config), None) if row.skip_duplicates else None
        if twin is not None:
            # As the project's search/duplicates.py: the twin's evaluations, state and value; no sample trained.
            # (A trial of `out` is finished: the replay runs one trial at a time.)
            earlier = study.trials[twin]
            copy_evaluations(trial, earlier)
            if earlier.state == optuna.trial.TrialState.PRUNED:
                study.tell(trial, state=earlier.state)
            else:
                study.tell(trial, earlier.value)
            out.append({**out[twin], "samples": 0, "duplicate of": twin})
            continue
        seen, stopped, reported = 0, False, []
        for p in evaluations(table, points, row):
            seen = p["samples"]
            value = pruning_value(p, row.signal)
            reported.append(p["samples"] if row.budget == "samples" else p["step"])
            trial.report(value, reported[-1])
            if trial.should_prune():
                stopped = True
                break
        final = points[-1]["accuracy"]
        if stopped:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, final)
        best = max(p["accuracy"] for p in points)
        out.append(
            {
                "config": config,
                "pruned": stopped,
                "samples": seen,
                "reported at": reported,
                "final": None if stopped else final,
                "best": None if stopped else best,
            }
        )
    return out


def summarize(
    table: dict[str, Any],
    n_seeds: int,
    n_trials: int,
    samplers: list[str],
    first_seed: int = 0,
    settings: list[Row] | None = None,
) -> list[dict[str, Any]]:
    import optuna

    from optuna_trainer.log import optuna_verbosity

    with optuna_verbosity(optuna.logging.ERROR):  # thousands of in-memory studies
        return _summarize(table, n_seeds, n_trials, samplers, first_seed, settings)


def _summarize(
    table: dict[str, Any],
    n_seeds: int,
    n_trials: int,
    samplers: list[str],
    first_seed: int,
    settings: list[Row] | None,
) -> list[dict[str, Any]]:
    best_config = max(table["curves"], key=lambda c: c["points"][-1]["accuracy"])["config"]
    results = []
    for sampler_name in samplers:
        base: dict[int, tuple[int, float]] = {}
        for row in settings or rows():
            saved, points, best_pruned, best_drawn = [], [], 0, 0
            for seed in range(first_seed, first_seed + n_seeds):
                trials = replay_search(table, row, sampler_name, seed, n_trials)
                samples = sum(t["samples"] for t in trials)
                best = max((t["final"] for t in trials if t["final"] is not None), default=float("nan"))
                if row.spec == "none":
                    base[seed] = (samples, best)
                none_samples, none_best = base[seed]
                saved.append(100.0 * (1 - samples / none_samples))
                points.append(100.0 * (best - none_best))
                drawn = [t for t in trials if t["config"] == best_config]
                best_drawn += bool(drawn)
                best_pruned += any(t["pruned"] for t in drawn)
            finite = [p for p in points if p == p]
            median_points = statistics.median(finite) if finite else float("nan")
            median_saved = statistics.median(saved)
            met = median_saved >= TARGET_SAVED and median_points >= -TARGET_POINTS
            results.append(
                {
                    "sampler": sampler_name,
                    "pruner": row.label,
                    "spec": row.spec,
                    "pruned on": f"{row.signal} at {row.budget}",
                    "signal": row.signal,
                    "budget": row.budget,
                    "saved median": median_saved,
                    "saved min": min(saved),
                    "saved max": max(saved),
                    "points median": median_points,
                    "points worst": min(finite) if finite else float("nan"),
                    "samples saved % (median [min, max])": f"{median_saved:.1f} [{min(saved):.1f}, {max(saved):.1f}]",
                    "best accuracy vs none, points (median / worst)": (
                        f"{median_points:+.2f} / {min(finite) if finite else float('nan'):+.2f}"
                    ),
                    "best config pruned (runs)": f"{best_pruned}/{best_drawn} runs that drew it",
                    "target met": "yes" if met and row.spec != "none" else ("-" if row.spec == "none" else "no"),
                }
            )
    return results


# ---- live check --------------------------------------------------------------------------------------------------


def live_search(
    table: dict[str, Any], row: Row, sampler_name: str, seed: int, n_trials: int, data: str
) -> list[dict[str, Any]]:
    """The same search run for real by OptunaTrainer: per trial its configuration, state, samples and final
    accuracy (a completed trial's value: its best evaluation)."""
    from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
    from optuna_trainer.study.attrs import read

    s = table["meta"]["settings"]
    space = {name: {"type": "categorical", "choices": choices} for name, choices in s["space"].items()}
    task = tasks.make_task(s["model"], data, s["n_train"], s["n_dev"], seed=s["seed"], layers=s["layers"])
    base_batch = max(s["space"]["per_device_train_batch_size"])
    finals: dict[int, float] = {}

    def metrics(pred: Any) -> dict[str, float]:
        return tasks.compute_metrics(pred)

    with tempfile.TemporaryDirectory() as out:
        args = OptunaTrainingArguments(
            output_dir=out,
            num_train_epochs=1,
            per_device_train_batch_size=base_batch,
            eval_strategy="steps",
            eval_steps=s["eval_samples"] // base_batch,  # at the base batch: every trial evaluates at equal samples
            seed=s["seed"],
            **recorder.QUIET,
            hp_space=space,
            n_trials=n_trials,
            sampler={"name": sampler_name, "seed": seed},
            pruner=row.spec,
            prune_metric=None if row.signal == "accuracy" else "loss",
            prune_budget=row.budget,
            storage="memory",
            study_name=f"replay-{seed}",
            save_best_model=False,
            skip_duplicates=row.skip_duplicates,
            search_report=False,
        )
        trainer = recorder.quiet_trainer(OptunaTrainer, task, args, compute_metrics=metrics)
        trainer.hyperparameter_search()
    for t in trainer.study.trials:
        finals[t.number] = t.value if t.value is not None else float("nan")
    return [
        {
            "config": {name: t.params[name] for name in s["space"]},
            "pruned": t.state.name == "PRUNED",
            "samples": read(t).get("samples"),
            "best": None if t.state.name == "PRUNED" else finals[t.number],  # the trial's value: its best evaluation
        }
        for t in trainer.study.trials
    ]


def transformers_live_search(
    table: dict[str, Any], row: Row, sampler_name: str, seed: int, n_trials: int, data: str
) -> list[dict[str, Any]]:
    """transformers' own search on the table's task (`Trainer.hyperparameter_search(backend="optuna")`, its
    default pruner) with an integer eval_steps: per trial its configuration, state, samples and final accuracy."""
    import optuna
    from transformers import Trainer, TrainingArguments

    from optuna_trainer.space.samplers import build_sampler

    if row.spec != "median" or row.budget != "steps":
        raise ValueError(f"{row.label}: transformers' search runs only its default (median, step keys)")
    s = table["meta"]["settings"]
    task = tasks.make_task(s["model"], data, s["n_train"], s["n_dev"], seed=s["seed"], layers=s["layers"])
    # transformers keeps none of its study: it is created in a storage of ours, to read the trials back.
    storage, study_name = optuna.storages.InMemoryStorage(), f"transformers-{seed}"

    def hp_space(trial: Any) -> dict[str, Any]:
        return {name: trial.suggest_categorical(name, choices) for name, choices in s["space"].items()}

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            num_train_epochs=1,
            per_device_train_batch_size=min(s["space"]["per_device_train_batch_size"]),
            eval_strategy="steps",
            eval_steps=fixed_eval_steps(table),  # the same optimizer steps for every trial, as transformers keeps it
            # transformers casts each drawn value to the type of the argument's current value: an int 0 here would
            # turn a warm-up ratio of 0.1 into 0 steps.
            warmup_steps=0.0,
            seed=s["seed"],
            **recorder.QUIET,
        )
        trainer = recorder.quiet_trainer(Trainer, task, args)
        trainer.hyperparameter_search(
            direction="maximize",
            backend="optuna",
            n_trials=n_trials,
            hp_space=hp_space,
            compute_objective=lambda metrics: metrics["eval_accuracy"],
            sampler=build_sampler({"name": sampler_name, "seed": seed}),
            storage=storage,
            study_name=study_name,
        )
    trials = optuna.load_study(study_name=study_name, storage=storage).trials
    return [
        {
            "config": {name: t.params[name] for name in s["space"]},
            "pruned": t.state.name == "PRUNED",
            "samples": max(t.intermediate_values) * t.params["per_device_train_batch_size"],
            "best": None if t.state.name == "PRUNED" else t.value,  # transformers' value: the last evaluation
        }
        for t in trials
    ]


LIVE_CASES = [
    (Row("median (defaults)", "median", "loss"), "random", 3),
    (Row("hyperband, min_resource=128 samples", {"name": "hyperband", "min_resource": 128}, "loss"), "tpe", 1),
    # transformers' own search, 8 trials: a batch-8 trial pruned at 128 samples and a batch-32 one at 512, on the
    # second table with seed 0 and on the first with seed 3.
    (transformers_rows()[0], "random", 0),
    (transformers_rows()[0], "random", 3),
    # The median defaults with repeats: more trials than the quick table's 4 configurations repeat some, and the
    # live search must take each repeat's result from its twin, untrained, as the replay does.
    (MEDIAN_DEFAULTS, "random", 0),
    # This package's step_percentile (figure 15's candidate), on the loss (the quick curves sit at the majority class):
    # with seed 4 it prunes the third and fourth trials at their first evaluation, two trials having reported it,
    # and two repeats of a pruned trial follow.
    (Row("step_percentile (defaults)", "step_percentile", "loss", skip_duplicates=True), "random", 4),
]


def live_check(table: dict[str, Any], cases: list[int], n_trials: int, data: str) -> list[dict[str, Any]]:
    """Run LIVE_CASES[i] for each i in `cases` for real and compare it, trial by trial, with its replay."""
    results = []
    for row, sampler_name, seed in (LIVE_CASES[i] for i in cases):
        theirs = row.schedule == "fixed steps"  # transformers' row: its own search, which scores the last evaluation
        start = time.perf_counter()
        live = (transformers_live_search if theirs else live_search)(table, row, sampler_name, seed, n_trials, data)
        seconds = time.perf_counter() - start
        replayed = [
            {**t, "best": t["final"] if theirs else t["best"]}
            for t in replay_search(table, row, sampler_name, seed, n_trials)
        ]
        same_configs = [a["config"] == b["config"] for a, b in zip(live, replayed, strict=True)]
        same_states = [a["pruned"] == b["pruned"] for a, b in zip(live, replayed, strict=True)]
        same_samples = [a["samples"] == b["samples"] for a, b in zip(live, replayed, strict=True)]
        gaps = [
            abs(a["best"] - b["best"])
            for a, b in zip(live, replayed, strict=True)
            if a["best"] is not None and b["best"] is not None
        ]
        results.append(
            {
                "case": f"{sampler_name} seed {seed}, {row.label} on {row.signal}, {n_trials} trials"
                + (" (transformers' own search)" if theirs else " (OptunaTrainer)"),
                "same configurations": f"{sum(same_configs)}/{len(live)}",
                "same states": f"{sum(same_states)}/{len(live)}",
                "same samples seen": f"{sum(same_samples)}/{len(live)}",
                "largest accuracy gap (points)": 100.0 * max(gaps) if gaps else float("nan"),
                "live seconds": seconds,
                "live": live,
                "replay": replayed,
            }
        )
    return results


LIVE_COLUMNS = [
    "case",
    "same configurations",
    "same states",
    "same samples seen",
    "largest accuracy gap (points)",
    "live seconds",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds first-seed .. first-seed+seeds-1 (20: a held-out check)"
    )
    parser.add_argument(
        "--grid", action="store_true", help="the second grid's rows (grid_rows) instead of the table's"
    )
    parser.add_argument("--live", type=int, default=0, help="check the replay against the first K live cases")
    parser.add_argument(
        "--live-case",
        type=int,
        action="append",
        default=None,
        help="check the replay against this live case (index into LIVE_CASES; 2 and 3: transformers' own search)",
    )
    parser.add_argument("--live-trials", type=int, default=6)
    parser.add_argument("--n-train", type=int, default=None, help="replay the table curves.py recorded with this")
    parser.add_argument("--seed", type=int, default=0, help="replay the table curves.py recorded with this seed")
    parser.add_argument("--data", default=tasks.DEFAULT_DATA)
    parser.add_argument("--out", default=tables.DEFAULT_OUT)
    a = parser.parse_args()
    path = os.path.join(a.out, recorder.table_file(a.quick, a.n_train, a.seed))
    if a.quick and not os.path.isfile(path):
        subprocess.run(
            [
                sys.executable,
                os.path.join(os.path.dirname(__file__), "curves.py"),
                *("--quick", "--out", a.out, "--data", a.data, "--seed", str(a.seed)),
                *(("--n-train", str(a.n_train)) if a.n_train is not None else ()),
            ],
            check=True,
        )
    table = load_table(path)
    n_seeds = a.seeds or (3 if a.quick else 20)
    n_trials = a.trials or (6 if a.quick else 30)
    start = time.perf_counter()
    results = summarize(table, n_seeds, n_trials, ["random", "tpe"], a.first_seed, grid_rows() if a.grid else None)
    seconds = time.perf_counter() - start
    meta = {
        "command": tables.command_line(),
        "curves": os.path.relpath(path, tables.REPO) if path.startswith(tables.REPO) else path,
        "curves from": f"{table['meta']['model']}; {table['meta']['data']}; {len(table['curves'])} configurations",
        "seeds": f"{a.first_seed}..{a.first_seed + n_seeds - 1}",
        "trials per search": n_trials,
        "replay seconds": round(seconds, 1),
    }
    notes = [
        "samples saved: 1 - (training samples the search ran) / (those of the same sampler and seed without pruning)",
        "best accuracy: the best final accuracy among the search's completed trials, minus that of the same sampler "
        "and seed without pruning",
        "best config pruned: of the runs that drew the table's best configuration (by final accuracy), how many "
        "pruned it at least once",
        "transformers' default setting: what Trainer.hyperparameter_search(backend='optuna') does with an integer "
        "eval_steps (its default): Optuna's MedianPruner() on the objective, every trial evaluated every "
        f"{fixed_eval_steps(table)} optimizer steps whatever its batch and reported at the step, so trials with other "
        "batch sizes are compared at other budgets and a larger batch is judged less often",
        "transformers' median, step keys, evaluations at equal samples: the same pruner and keys with evaluations at "
        "the table's equal sample counts (transformers with eval_steps as a fraction of training): the step keys alone",
    ]
    table_suffix = recorder.table_suffix(a.n_train, a.seed)
    name = NAME + table_suffix + ("_grid" if a.grid else "") + (f"_seeds{a.first_seed}" if a.first_seed else "")
    tables.write_table(a.out, name, "Pruners on recorded curves", COLUMNS, results, meta, notes)
    cases = sorted(set(range(a.live)) | set(a.live_case or ()))
    if cases:
        live = live_check(table, cases, a.live_trials, a.data)
        tables.write_table(
            a.out,
            NAME + table_suffix + "_live",
            "Replay against live searches",
            LIVE_COLUMNS,
            live,
            {"command": tables.command_line()},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
