"""Figure 12: out of memory as an Optuna constraint: how often TPE proposes configurations that run out of memory.

The stand-in of tests/oom_standin.py: a model whose training forward raises `torch.OutOfMemoryError` above a batch
size x sequence length product, over a space (`per_device_train_batch_size` 1-32, `model.seq_len` 8-64) half of whose
points are beyond it, and whose loss is best next to the limit. The same 30-trial search (multivariate TPE, seed s,
10 startup trials) runs twice per seed: with `oom_infeasible=True` (the default: the trial is PRUNED with the
constraint out_of_memory=1.0) and with `oom_infeasible=False` (FAIL, which TPE ignores). Counted: of the trials
numbered 10 to 29 (after the startup trials), how many fell in the infeasible region. Target: at most a third with
the constraint.

    python benchmarks/oom_constraint.py               # seeds 0-4, through OptunaTrainer
    python benchmarks/oom_constraint.py --seeds 0     # one seed (CI)
    python benchmarks/oom_constraint.py --direct --seeds 0 1 2 3 4 5 6 7 8 9
        # the same sampler, space, rule and states through Optuna's ask/tell with no training (a second a search)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]  # the repository root: tests.*

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from tests.oom_standin import (  # noqa: E402
    BATCH,
    N_STARTUP,
    SEQ_LEN,
    after_startup,
    infeasible,
    infeasible_share,
    run_search,
)

N_TRIALS = 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--direct", action="store_true", help="ask/tell the same TPE without training")
    options = parser.parse_args()
    if options.direct:
        direct(options.seeds)
        return
    logging.disable(logging.WARNING)  # each out-of-memory trial logs a warning: the table is what this prints
    print(f"infeasible share of the space: {infeasible_share():.3f}; trials {N_STARTUP}-{N_TRIALS - 1} counted")
    print("| seed | constraint (oom_infeasible) | trials run | in the infeasible region after startup | seconds |")
    print("|---|---|---|---|---|")
    totals = {True: [0, 0], False: [0, 0]}
    for seed in options.seeds:
        for constrained in (True, False):
            started = time.monotonic()
            with tempfile.TemporaryDirectory() as out:
                study = run_search(out, oom_infeasible=constrained, n_trials=N_TRIALS, seed=seed)
            later, inside = after_startup(study, N_TRIALS)
            totals[constrained][0] += inside
            totals[constrained][1] += later
            label = "on (PRUNED + constraint)" if constrained else "off (FAIL)"
            print(
                f"| {seed} | {label} | {len(study.trials)} | {inside}/{later} | {time.monotonic() - started:.1f} |",
                flush=True,
            )
    for constrained in (True, False):
        inside, later = totals[constrained]
        label = "on" if constrained else "off"
        print(f"constraint {label}: {inside}/{later} = {inside / later:.3f} of the trials after startup infeasible")


def direct_search(seed: int, constrained: bool) -> optuna.Study:
    """The search of `run_search` through ask/tell: an infeasible point ends PRUNED with the constraint (or FAIL),
    a feasible one COMPLETE with the stand-in's loss; 30 trials that are not FAIL, as n_trials counts them."""
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True))
    while sum(t.state != TrialState.FAIL for t in study.trials) < N_TRIALS and len(study.trials) < 10 * N_TRIALS:
        trial = study.ask()
        batch = trial.suggest_int("per_device_train_batch_size", *BATCH)
        seq_len = trial.suggest_int("model.seq_len", *SEQ_LEN)
        if not infeasible(trial.params):
            study.tell(trial, 1.0 / (batch * seq_len))
        elif constrained:
            trial.set_constraint("out_of_memory", 1.0)
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, state=TrialState.FAIL)
    return study


def direct(seeds: list[int]) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for constrained in (True, False):
        counts = [after_startup(direct_search(seed, constrained), N_TRIALS)[1] for seed in seeds]
        label = "on (PRUNED + constraint)" if constrained else "off (FAIL)"
        share = sum(counts) / (len(seeds) * (N_TRIALS - N_STARTUP))
        print(f"constraint {label}: infeasible trials after startup per seed {counts}; share {share:.3f}")


if __name__ == "__main__":
    main()
