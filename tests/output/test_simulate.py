"""`optuna-trainer simulate` (output/simulate.py): a finished study's recorded curves replayed under other pruners and
samplers, with the figures computed by hand on a small study, and once on the study of a real search."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from optuna_trainer.cli import main
from optuna_trainer.output.simulate import format_simulation, simulate
from tests.support import base_args, compute_metrics, make_dataset, tiny_model

# Reported at 10, 20, 30 training samples; trial 3 was pruned by the search at 10 (its curve is cut short there).
CURVES = [
    (TrialState.COMPLETE, [0.5, 0.6, 0.7], 0.7),
    (TrialState.COMPLETE, [0.6, 0.7, 0.8], 0.8),  # the best
    (TrialState.COMPLETE, [0.4, 0.45, 0.5], 0.5),
    (TrialState.PRUNED, [0.3], None),
]


def _study(storage: str | None = None) -> optuna.Study:
    study = optuna.create_study(direction="maximize", storage=storage, study_name="recorded")
    for i, (state, curve, value) in enumerate(CURVES):
        study.add_trial(
            create_trial(
                state=state,
                value=value,
                params={"learning_rate": 1e-4 * (i + 1)},
                distributions={"learning_rate": FloatDistribution(1e-5, 1e-2, log=True)},
                intermediate_values={10 * (k + 1): v for k, v in enumerate(curve)},
                user_attrs={
                    "samples": 10 * len(curve),
                    "max_samples": 30,
                    "samples_per_step": 2,
                    "budget_per_step": 2,
                },
            )
        )
    return study


def _row(result: dict, pruner: str) -> dict:
    (row,) = [r for r in result["rows"] if r["pruner"] == pruner]
    return row


def test_figures_by_hand():
    result = simulate(
        _study(),
        pruners=[
            "none",
            {"name": "median", "n_startup_trials": 1},
            {"name": "threshold", "lower": 0.55},
            {"name": "threshold", "lower": 0.65},
        ],
    )
    assert (result["trials"], result["full curves"], result["cut short"]) == (4, 3, 1)
    assert result["no-pruning samples"] == 120 and result["study best"] == 0.8

    none = _row(result, "NopPruner()")
    # Every trial to its end, except trial 3, whose curve stops at 10: 30 + 30 + 30 + 10.
    assert none["samples saved % (median)"] == pytest.approx(100 * (1 - 100 / 120))
    assert none["vs the study's best (median / worst)"] == (0.0, 0.0) and none["cut short (max)"] == 1

    median = _row(result, "MedianPruner(n_startup_trials=1, n_warmup_steps=0, interval_steps=1)")
    # Trial 0 starts it; trial 1 beats the median everywhere; trials 2 and 3 are below it at 10: 30 + 30 + 10 + 10.
    assert median["samples saved % (median)"] == pytest.approx(100 * (1 - 80 / 120))
    assert median["pruned / completed (median)"] == (2, 2) and median["best trial pruned (replays)"] == 0
    assert median["best value (median)"] == 0.8 and median["cut short (max)"] == 0

    low = _row(result, "ThresholdPruner(lower=0.55)")
    # Only trial 1 passes 0.55 at 10: 10 + 30 + 10 + 10.
    assert low["samples saved % (median)"] == pytest.approx(50.0) and low["best value (median)"] == 0.8

    high = _row(result, "ThresholdPruner(lower=0.65)")
    # Everything stops at 10, the best trial too: nothing found.
    assert high["samples saved % (median)"] == pytest.approx(100 * (1 - 40 / 120))
    assert high["best trial pruned (replays)"] == 1 and high["best value (median)"] is None

    text = format_simulation(result)
    assert "Caveat: 1 trial(s) were pruned by the search" in text
    assert "ThresholdPruner(lower=0.65)" in text


def test_the_default_pruners_include_step_percentile():
    result = simulate(_study())  # the default list, as `optuna-trainer simulate` without --pruners
    row = _row(result, "StepPercentilePruner(percentile=35.0, n_min_trials=2)")
    # Trials 0 and 1 run before 2 others reported a step; trial 2 is below the 35th percentile of 0.5 and 0.6
    # (0.535) at 10, trial 3 below that of 0.4, 0.5 and 0.6 (0.47), pruned ones counted: 30 + 30 + 10 + 10.
    assert row["samples saved % (median)"] == pytest.approx(100 * (1 - 80 / 120))
    assert row["pruned / completed (median)"] == (2, 2) and row["best value (median)"] == 0.8


def test_random_orders_give_a_spread():
    result = simulate(_study(), pruners=[{"name": "median", "n_startup_trials": 1}], orders=7)
    (row,) = result["rows"]
    assert row["replays"] == 8
    # In some order trial 2 or 3 comes first and starts the median itself: fewer samples saved than in order.
    assert row["samples saved % (min)"] < row["samples saved % (median)"] <= 100 * (1 - 80 / 120) + 1e-9


def test_samplers_on_a_recorded_grid():
    study = optuna.create_study(direction="maximize")
    grid = {"lr": [1e-4, 1e-3], "batch": [8, 16]}
    for i, (lr, batch) in enumerate([(a, b) for a in grid["lr"] for b in grid["batch"]]):
        study.add_trial(
            create_trial(
                value=0.5 + 0.1 * i,
                params={"lr": lr, "batch": batch},
                distributions={k: CategoricalDistribution(v) for k, v in grid.items()},
                intermediate_values={10: 0.4 + 0.1 * i, 20: 0.5 + 0.1 * i},
            )
        )
    # skip_duplicates=False: every draw replayed in full, repeats too.
    result = simulate(study, pruners=["none"], samplers=["random", "tpe"], seeds=3, n_trials=4, skip_duplicates=False)
    rows = {(r["sampler"], r["pruner"]): r for r in result["rows"]}
    assert set(rows) == {("as recorded", "NopPruner()"), ("random", "NopPruner()"), ("tpe", "NopPruner()")}
    for key in (("random", "NopPruner()"), ("tpe", "NopPruner()")):
        assert rows[key]["replays"] == 3 and rows[key]["unrecorded draws (max)"] == 0
        assert rows[key]["samples saved % (median)"] == 0.0  # 4 full trials, every one recorded
    # A sampler that always draws the same configuration: with skip_duplicates (the default, as a search), the 3
    # repeats take the first draw's result and train nothing: 1 of 4 trainings.
    same = optuna.samplers.PartialFixedSampler({"lr": 1e-3, "batch": 16}, optuna.samplers.RandomSampler(seed=0))
    for skip, saved in ((True, 75.0), (False, 0.0)):
        result = simulate(study, pruners=["none"], samplers=[same], seeds=1, n_trials=4, skip_duplicates=skip)
        (row,) = [r for r in result["rows"] if r["sampler"] != "as recorded"]
        assert row["samples saved % (median)"] == saved and row["best value (median)"] == 0.5 + 0.1 * 3
        assert row["pruned / completed (median)"] == (0, 4)


def test_a_studys_own_repeats_are_not_replayed():
    """A trial with `duplicate_of` (skip_duplicates) trained nothing: it is a copy of its twin, not a curve."""
    study = _study()
    twin = study.trials[1]
    study.add_trial(
        create_trial(
            value=twin.value,
            params=twin.params,
            distributions=twin.distributions,
            intermediate_values=twin.intermediate_values,
            user_attrs={"samples": 0, "duplicate_of": 1},
        )
    )
    result = simulate(study, pruners=["none"])
    assert (result["trials"], result["no-pruning samples"]) == (4, 120)


def test_refusals():
    with pytest.raises(ValueError, match="several objectives"):
        simulate(optuna.create_study(directions=["minimize", "maximize"]))
    with pytest.raises(ValueError, match="nothing to replay"):
        simulate(optuna.create_study())


@pytest.mark.slow
def test_on_a_real_search_from_the_command_line(tmp_path, capsys):
    """The recipe of docs/search.md: the first trials with pruner='none' record full curves; the replay of that
    study then prices the other pruners."""
    out = tmp_path / "out"
    args = OptunaTrainingArguments(
        **base_args(
            out,
            storage=f"sqlite:///{tmp_path / 'study.db'}",
            study_name="full-curves",
            n_trials=6,
            pruner="none",
            sampler={"name": "random", "seed": 0},
            hp_space={"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}},
            search_report=False,
        )
    )
    OptunaTrainer(
        model_init=tiny_model,
        args=args,
        train_dataset=make_dataset(),
        eval_dataset=make_dataset(32, seed=1),
        compute_metrics=compute_metrics,
    ).hyperparameter_search()
    capsys.readouterr()
    rows = tmp_path / "rows.json"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["simulate", "--storage", storage, "--pruners", "none", "median", "--json", str(rows)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(rows.read_text())
    assert (result["trials"], result["full curves"], result["cut short"]) == (6, 6, 0)
    # 6 trials of 8 steps x 8 samples, all recorded to the end.
    assert result["no-pruning samples"] == 6 * 64
    none, median = result["rows"]
    assert none["samples saved % (median)"] == 0 and none["vs the study's best (median / worst)"] == [0.0, 0.0]
    assert median["pruner"].startswith("MedianPruner(n_startup_trials=5")
    assert "Replay of study 'full-curves' (maximize): 6 trials, 6 with full curves" in printed
    assert "Caveat" not in printed
