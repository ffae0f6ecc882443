"""Figure 3: what pruning saves. The same search with `pruner: none`, our default pruner, hyperband and the setting
docs/benchmarks.md recommends: total optimizer steps, wall time, best dev accuracy.

Every row runs the same search (space `tasks.SPACE`, `TPESampler(seed=0)`, n_trials, steps, evaluation every
`eval_steps`) in this process, one after the other; only the pruner differs. Target: at least 40% fewer optimizer steps
than `none` for a best dev accuracy within 1 point of it.

    python benchmarks/pruning.py            # default: MiniLM (first 3 layers), SST-2 subset
    python benchmarks/pruning.py --quick    # CI: tiny BERT from a config
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import Any

# benchmarks/ (its shared modules) and the repository root (tests.support: the tiny models and recorders)
sys.path[:0] = [
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
]
import measure  # noqa: E402
import sides  # noqa: E402
import tables  # noqa: E402
import tasks  # noqa: E402

from tests.support import TrialRecorder  # noqa: E402

NAME = "pruning"
COLUMNS = [
    "pruner",
    "optimizer steps",
    "steps saved vs none %",
    "completed/pruned",
    "wall seconds",
    "best dev accuracy",
    "accuracy vs none (points)",
    "target met",
]
TARGET_SAVED = 40.0
TARGET_POINTS = 1.0


def settings(quick: bool, model: str | None, layers: int | None) -> dict[str, Any]:
    if quick:
        return dict(
            model=model or "tiny-bert", layers=None, n_train=64, n_dev=64, steps=8, eval_steps=2, n_trials=6, batch=16
        )
    return dict(
        model=model or "minilm",
        layers=layers or 3,
        n_train=1024,
        n_dev=128,
        steps=60,
        eval_steps=15,
        n_trials=10,
        batch=16,
    )


def recommended(s: dict[str, Any]) -> dict[str, Any]:
    """The setting docs/benchmarks.md recommends for plateaus of tied accuracies: a floor at chance (two balanced
    classes) once two evaluations have passed, so that a trial is judged after it had time to leave the plateau."""
    return {"name": "threshold", "lower": 0.5, "n_warmup_steps": 2 * s["eval_steps"]}


def pruners(s: dict[str, Any]) -> list[tuple[str, Any]]:
    """(label, pruner spec) per row: the spec exactly as a user writes it in OptunaTrainingArguments."""
    return [
        ("none", "none"),
        ("median (default: n_startup_trials=5, n_warmup_steps=0)", "median"),
        ("hyperband (defaults)", "hyperband"),
        ("recommended: threshold lower=0.5 (chance) after 2 evaluations", recommended(s)),
    ]


def run(task: tasks.Task, s: dict[str, Any], pruner: Any) -> dict[str, Any]:
    from optuna_trainer import NoCompletedTrialError

    rec = TrialRecorder(tasks.SPACE)
    with tempfile.TemporaryDirectory() as out:
        trainer = tasks.search_trainer(task, s, out, pruner, [rec])
        start = time.perf_counter()
        try:
            trainer.hyperparameter_search()
        except NoCompletedTrialError:
            pass  # every trial pruned: a result of this row like any other (no best accuracy)
        seconds = time.perf_counter() - start
    states = [t.state.name for t in trainer.study.trials]
    complete = "COMPLETE" in states
    return {
        "optimizer steps": rec.steps,
        "completed/pruned": f"{states.count('COMPLETE')}/{states.count('PRUNED')}",
        "wall seconds": seconds,
        "best dev accuracy": trainer.study.best_value if complete else float("nan"),
        "per-trial steps": [t["steps"] for t in rec.trials],
        "per-trial accuracies": [t["accuracy"] for t in rec.trials],
        "per-trial eval losses": [t["loss"] for t in rec.trials],
        "per-trial values": [t["values"] for t in rec.trials],
    }


REPLAY_COLUMNS = [
    "pruner",
    "optimizer steps",
    "steps saved vs none %",
    "completed/pruned",
    "best dev accuracy",
    "accuracy vs none (points)",
    "target met",
]


def replay_candidates(s: dict[str, Any]) -> list[tuple[str, Any]]:
    """Settings tried on the recorded curves (warm-up in evaluations, start-up trials, floors, rank-based pruners)."""
    e = s["eval_steps"]
    return [
        *pruners(s)[1:3],
        # Rank-based: of trials tied at the same value (a classifier stuck at the majority class), it keeps only the
        # top 1/reduction_factor, where the median rule keeps every tie.
        ("successive_halving (defaults)", "successive_halving"),
        ("median, n_startup_trials=3", {"name": "median", "n_startup_trials": 3}),
        (
            "median, n_startup_trials=3, n_warmup_steps=1 evaluation",
            {"name": "median", "n_startup_trials": 3, "n_warmup_steps": e},
        ),
        ("patient (patience 1 evaluation, no wrapped pruner)", {"name": "patient", "patience": 1}),
        ("hyperband, min_resource=1 evaluation", {"name": "hyperband", "min_resource": e, "max_resource": s["steps"]}),
        ("successive_halving, min_resource=2 evaluations", {"name": "successive_halving", "min_resource": 2 * e}),
        (
            "threshold lower=0.5 (chance), n_warmup_steps=1 evaluation",
            {"name": "threshold", "lower": 0.5, "n_warmup_steps": e},
        ),
        ("threshold lower=0.5 (chance), n_warmup_steps=2 evaluations (recommended)", recommended(s)),
        # Keeps the top quarter at each step (for a maximized value: prunes below the 75th percentile), so a trial
        # tied with a majority of dead ones is pruned as soon as a quarter of the trials have left the plateau.
        (
            "percentile 25, n_startup_trials=2, n_warmup_steps=1 evaluation",
            {"name": "percentile", "percentile": 25.0, "n_startup_trials": 2, "n_warmup_steps": e},
        ),
        (
            "percentile 25, n_startup_trials=5, n_warmup_steps=1 evaluation",
            {"name": "percentile", "percentile": 25.0, "n_startup_trials": 5, "n_warmup_steps": e},
        ),
    ]


def replay(path: str, out: str) -> dict[str, Any]:
    """Replay pruner settings on the evaluation curves the `none` row recorded: what each would have pruned.

    Exact for the pruning decisions while the sampler's choices do not depend on earlier results (all trials within
    TPE's n_startup_trials=10 random start-up trials, as with the default 10 trials): every trial then gets the same
    parameters and so the same curve, whatever was pruned before it. Hyperband assigns a trial to a bracket by a hash
    of the study name and the trial number: the replay's study has the run's name (`tasks.STUDY_NAME`).
    """
    import optuna

    from optuna_trainer.log import optuna_verbosity

    with optuna_verbosity(optuna.logging.ERROR):  # a study per replayed setting
        return _replay(path, out)


def _replay(path: str, out: str) -> dict[str, Any]:
    import optuna

    from optuna_trainer.space.pruners import build_pruner

    table = json.load(open(path, encoding="utf-8"))
    s = table["meta"]["settings"]
    none = next(r for r in table["rows"] if r["spec"] == "none")
    curves = none["per-trial accuracies"]
    eval_at = list(range(s["eval_steps"], s["steps"] + 1, s["eval_steps"]))
    total_none = none["optimizer steps"]
    rows = []
    for label, spec in replay_candidates(s):
        study = optuna.create_study(direction="maximize", pruner=build_pruner(spec), study_name=tasks.STUDY_NAME)
        steps, best, pruned = 0, float("-inf"), 0
        for curve in curves:
            trial = study.ask()
            stopped = False
            for step, value in zip(eval_at, curve, strict=False):
                trial.report(value, step)
                steps = steps + s["eval_steps"]
                if trial.should_prune():
                    stopped = True
                    break
            if stopped:
                pruned += 1
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, max(curve))
                best = max(best, max(curve))
        saved = 100.0 * (1 - steps / total_none)
        best = best if best > float("-inf") else float("nan")  # every trial pruned: no completed trial
        points = 100.0 * (best - none["best dev accuracy"])
        rows.append(
            {
                "pruner": label,
                "spec": spec,
                "optimizer steps": steps,
                "steps saved vs none %": saved,
                "completed/pruned": f"{len(curves) - pruned}/{pruned}",
                "best dev accuracy": best,
                "accuracy vs none (points)": points,
                "target met": "yes" if saved >= TARGET_SAVED and points >= -TARGET_POINTS else "no",
            }
        )
    meta = {
        "command": tables.command_line(),
        "replayed from": os.path.relpath(path, tables.REPO),
        "model": table["meta"]["model"],
        "data": table["meta"]["data"],
        "settings": s,
    }
    tables.write_table(
        out,
        NAME + "_replay",
        "Pruning settings replayed on the recorded curves of pruner none",
        REPLAY_COLUMNS,
        rows,
        meta,
    )
    return {"rows": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = sides.parser(__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=None, help="MiniLM layers to keep (default 3)")
    p.add_argument("--pruners", default=None, help="JSON list of [label, spec] rows replacing the default rows")
    p.add_argument(
        "--replay", default=None, help="a pruning.json: replay more pruner settings on its none row's curves"
    )
    a = p.parse_args(argv)
    if a.replay:
        return replay(a.replay, a.out)
    sides.quiet()
    s = settings(a.quick, a.model, a.layers)
    task = tasks.make_task(s["model"], a.data, s["n_train"], s["n_dev"], layers=s["layers"])
    rows_spec = [tuple(r) for r in json.loads(a.pruners)] if a.pruners else pruners(s)
    load_before = measure.loadavg()
    rows: list[dict[str, Any]] = []
    baseline: dict[str, Any] | None = None
    for label, spec in rows_spec:
        result = run(task, s, spec)
        if baseline is None and spec == "none":
            baseline = result
        row = {"pruner": label, "spec": spec, **result}
        if baseline is not None and spec != "none":
            saved = 100.0 * (1 - result["optimizer steps"] / baseline["optimizer steps"])
            points = 100.0 * (result["best dev accuracy"] - baseline["best dev accuracy"])
            row["steps saved vs none %"] = saved
            row["accuracy vs none (points)"] = points
            row["target met"] = "yes" if saved >= TARGET_SAVED and points >= -TARGET_POINTS else "no"  # NaN: no
        elif spec == "none":
            row["steps saved vs none %"] = 0.0
            row["accuracy vs none (points)"] = 0.0
            row["target met"] = "baseline"
        rows.append(row)
        print(f"{label}: {result}", flush=True)
    load_after = measure.loadavg()
    meta = {
        "command": tables.command_line(),
        "model": task.model_name,
        "data": task.source,
        "settings": {**s, "space": tasks.SPACE, "sampler": "TPESampler(seed=0)"},
        "target": f">= {TARGET_SAVED:.0f}% fewer optimizer steps than none, best dev accuracy within "
        f"{TARGET_POINTS:.0f} point",
        "loadavg before": load_before,
        "loadavg after": load_after,
    }
    tables.write_table(a.out, NAME, "Pruning savings: none vs default vs hyperband", COLUMNS, rows, meta)
    return {"rows": rows}


if __name__ == "__main__":
    main()
