from __future__ import annotations

import optuna
import pytest

from optuna_trainer import OptunaTrainingArguments, SearchSpace, build_pruner, build_sampler
from optuna_trainer.space.step_percentile import StepPercentilePruner

SPACE = SearchSpace.parse(
    {
        "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        "per_device_train_batch_size": {"type": "categorical", "choices": [8, 16]},
    },
    OptunaTrainingArguments,
)
GRID_SPACE = SearchSpace.parse(
    {
        "per_device_train_batch_size": {"type": "categorical", "choices": [8, 16]},
        "num_train_epochs": {"type": "int", "low": 1, "high": 3},
    },
    OptunaTrainingArguments,
)


@pytest.mark.parametrize(
    "name,cls",
    [
        ("tpe", optuna.samplers.TPESampler),
        ("random", optuna.samplers.RandomSampler),
        ("cmaes", optuna.samplers.CmaEsSampler),
        ("bruteforce", optuna.samplers.BruteForceSampler),
        ("gp", optuna.samplers.GPSampler),
        ("qmc", optuna.samplers.QMCSampler),
        ("nsga2", optuna.samplers.NSGAIISampler),
        ("TPE", optuna.samplers.TPESampler),
    ],
)
def test_sampler_by_name(name, cls):
    assert type(build_sampler(name, SPACE)) is cls


def test_sampler_default_is_tpe_and_objects_pass_through():
    assert type(build_sampler(None)) is optuna.samplers.TPESampler
    sampler = optuna.samplers.RandomSampler(seed=3)
    assert build_sampler(sampler) is sampler


def test_sampler_kwargs_reach_the_constructor():
    sampler = build_sampler({"name": "tpe", "seed": 0, "multivariate": True, "n_startup_trials": 3})
    assert sampler._multivariate is True and sampler._n_startup_trials == 3
    from_json = build_sampler('{"name": "tpe", "seed": 0, "multivariate": true}')
    assert from_json._multivariate is True


def test_grid_built_from_declarative_space():
    sampler = build_sampler("grid", GRID_SPACE)
    assert isinstance(sampler, optuna.samplers.GridSampler)
    study = optuna.create_study(sampler=sampler)
    seen = []
    study.optimize(lambda t: seen.append(tuple(GRID_SPACE.suggest(t).values())) or 0.0, n_trials=10)
    assert sorted(seen) == sorted((b, e) for b in (8, 16) for e in (1, 2, 3))  # each point once, then it stops


def test_same_seed_same_sequence():
    def sequence(seed):
        study = optuna.create_study(sampler=build_sampler({"name": "tpe", "seed": seed, "n_startup_trials": 2}))
        study.optimize(lambda t: SPACE.suggest(t)["learning_rate"], n_trials=6)
        return [t.params for t in study.trials]

    assert sequence(0) == sequence(0)
    assert sequence(0) != sequence(1)


@pytest.mark.parametrize(
    "spec,message",
    [
        (
            "tpee",
            r"sampler: unknown name 'tpee'; valid names: \['bruteforce', 'cmaes', 'gp', 'grid', 'nsga2', 'qmc', 'random', 'tpe'\]",
        ),
        ({"name": "tpe", "sed": 0}, r"sampler 'tpe': unknown argument\(s\) \['sed'\]; TPESampler takes \[.*'seed'"),
        ({"seed": 0}, r"sampler: the dict needs a 'name' key"),
        (
            {"name": "nsga2", "population_size": 1},
            r"sampler 'nsga2': .population_size. must be greater than or equal to 2",
        ),
        (42, r"sampler: expected a name"),
    ],
)
def test_bad_sampler(spec, message):
    with pytest.raises((ValueError, TypeError), match=message):
        build_sampler(spec, SPACE)


def test_grid_without_declarative_space():
    with pytest.raises(ValueError, match=r"sampler 'grid': needs a grid"):
        build_sampler("grid", None)


@pytest.mark.parametrize(
    "name,cls",
    [
        ("median", optuna.pruners.MedianPruner),
        ("percentile", None),
        ("hyperband", optuna.pruners.HyperbandPruner),
        ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
        ("wilcoxon", optuna.pruners.WilcoxonPruner),
        ("none", optuna.pruners.NopPruner),
    ],
)
def test_pruner_by_name(name, cls):
    if name == "percentile":
        pruner = build_pruner({"name": "percentile", "percentile": 25.0})
        assert type(pruner) is optuna.pruners.PercentilePruner and pruner._percentile == 25.0
    else:
        assert type(build_pruner(name)) is cls


def test_default_pruner_is_step_percentile_at_its_chosen_settings():
    pruner = build_pruner(None)
    assert type(pruner) is StepPercentilePruner
    # the settings figure 15 chose on three tables and the held-out table kept
    assert pruner._percentile == 35.0 and pruner._n_min_trials == 2


def test_patient_wraps_another():
    pruner = build_pruner(
        {"name": "patient", "patience": 2, "min_delta": 0.01, "wrapped": {"name": "median", "n_startup_trials": 1}}
    )
    assert isinstance(pruner, optuna.pruners.PatientPruner)
    assert pruner._patience == 2 and pruner._min_delta == 0.01
    assert isinstance(pruner._wrapped_pruner, optuna.pruners.MedianPruner)
    assert pruner._wrapped_pruner._n_startup_trials == 1


def test_threshold_and_ready_object():
    pruner = build_pruner({"name": "threshold", "lower": 0.5})
    assert isinstance(pruner, optuna.pruners.ThresholdPruner) and pruner._lower == 0.5
    ready = optuna.pruners.NopPruner()
    assert build_pruner(ready) is ready


@pytest.mark.parametrize(
    "spec,message",
    [
        (
            "medain",
            r"pruner: unknown name 'medain'; valid names: \['hyperband', 'median', 'none', 'patient', 'percentile', 'step_percentile', 'successive_halving', 'threshold', 'wilcoxon'\]",
        ),
        (
            {"name": "median", "n_startup": 3},
            r"pruner 'median': unknown argument\(s\) \['n_startup'\]; MedianPruner takes \['n_startup_trials', 'n_warmup_steps', 'interval_steps', 'n_min_trials'\]",
        ),
        ({"name": "median", "n_startup_trials": -1}, r"pruner 'median': .*n_startup_trials"),
        ({"name": "patient"}, r"pruner 'patient': 'patience' is required"),
        ({"name": "patient", "patience": 1, "wrapped": "nope"}, r"pruner: unknown name 'nope'"),
        ({"name": "threshold"}, r"pruner 'threshold': .*lower.*upper"),
    ],
)
def test_bad_pruner(spec, message):
    with pytest.raises(ValueError, match=message):
        build_pruner(spec)


def test_printed_settings_describe_what_each_was_built_from():
    from optuna_trainer.space.pruners import describe_pruner
    from optuna_trainer.space.samplers import describe_sampler
    from optuna_trainer.space.search_space import SearchSpace

    spec = {"name": "patient", "patience": 2, "wrapped": {"name": "median", "n_startup_trials": 1}}
    assert describe_pruner(build_pruner(spec), spec) == (
        "PatientPruner(patience=2, wrapped=MedianPruner(n_startup_trials=1, n_warmup_steps=0, interval_steps=1))"
    )
    assert describe_pruner(build_pruner(None)) == "StepPercentilePruner(percentile=35.0, n_min_trials=2)"
    assert describe_pruner(build_pruner("median"), "median") == (
        "MedianPruner(n_startup_trials=5, n_warmup_steps=0, interval_steps=1)"
    )
    assert describe_pruner(
        build_pruner({"name": "hyperband", "min_resource": 2}), {"name": "hyperband", "min_resource": 2}
    ) == ("HyperbandPruner(min_resource=2)")
    mine = optuna.pruners.MedianPruner(n_startup_trials=9)
    assert describe_pruner(mine, mine) == "MedianPruner"  # the user's own object: no guessing at its settings
    space = SearchSpace.parse(
        {
            "learning_rate": {"type": "categorical", "choices": [1e-5, 2e-5]},
            "num_train_epochs": {"type": "int", "low": 1, "high": 3},
        }
    )
    assert describe_sampler(build_sampler("grid", space), "grid", space) == "GridSampler(grid_points=6)"
    grid = {"name": "grid", "search_space": {"x": [1, 2, 3, 4]}}
    assert describe_sampler(build_sampler(grid), grid) == "GridSampler(grid_points=4)"


@pytest.mark.parametrize(
    "spec,default",
    [
        (None, True),
        ("step_percentile", True),
        ({"name": "step_percentile", "percentile": 35.0, "n_min_trials": 2}, True),  # spelt out: the main job's config
        ('{"name": "step_percentile"}', True),
        ({"name": "step_percentile", "percentile": 25.0}, False),
        ({"name": "step_percentile", "n_min_trials": 3}, False),
        ("median", False),
        ("none", False),
        (StepPercentilePruner(percentile=35.0, n_min_trials=2), False),  # an object: its settings are not read back
    ],
)
def test_which_pruners_are_called_the_default(spec, default):
    from optuna_trainer.space.pruners import is_default_pruner

    assert is_default_pruner(build_pruner(spec), spec) is default


@pytest.mark.parametrize(
    "spec,default",
    [
        (None, True),
        ("tpe", True),
        ({"name": "tpe", "seed": 0}, True),  # a seed changes the draws, not the method
        ({"name": "tpe", "multivariate": True}, False),
        ("random", False),
        ({"name": "random", "seed": 0}, False),
        (optuna.samplers.TPESampler(seed=0), False),  # an object: its settings are not read back
    ],
)
def test_which_samplers_are_called_the_default(spec, default):
    from optuna_trainer.space.samplers import is_default_sampler

    assert is_default_sampler(spec) is default
