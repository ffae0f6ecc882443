from __future__ import annotations

import io
import json
import logging

import optuna
import pytest
import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from optuna_trainer import OptunaTrainingArguments
from optuna_trainer.arguments import SEARCH_FIELDS, trial_arguments
from optuna_trainer.search.settings import resolve_settings
from optuna_trainer.space.step_percentile import StepPercentilePruner

SPACE = {
    "learning_rate": {"type": "float", "low": 5e-6, "high": 5e-5, "log": True},
    "per_device_train_batch_size": {"type": "categorical", "choices": [64, 128, 256]},
}
SEARCH = dict(
    hp_space=SPACE,
    n_trials=7,
    timeout=600.0,
    direction="maximize",
    objective_metric="accuracy",
    sampler={"name": "tpe", "seed": 0, "multivariate": True},
    pruner={"name": "patient", "patience": 2, "min_delta": 0.0, "wrapped": {"name": "median"}},
    storage="sqlite:///study.db",
    study_name="sweep",
)


def cli_argv(output_dir: str) -> list[str]:
    argv = ["--output_dir", output_dir, "--report_to", "none"]
    for key, value in SEARCH.items():
        argv += [f"--{key}", json.dumps(value) if isinstance(value, dict) else str(value)]
    return argv


def resolved(args: OptunaTrainingArguments) -> dict:
    return {name: getattr(args, name) for name in SEARCH_FIELDS} | {"search_space": args.search_space}


class TestThreeWays:
    def test_python_cli_and_yaml_give_the_same_arguments(self, tmp_path):
        out = str(tmp_path / "o")
        from_python = OptunaTrainingArguments(output_dir=out, report_to="none", **SEARCH)
        parser = HfArgumentParser(OptunaTrainingArguments)
        (from_cli,) = parser.parse_args_into_dataclasses(cli_argv(out))
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"output_dir": out, "report_to": "none", **SEARCH}))
        (from_yaml,) = parser.parse_yaml_file(str(config))
        config_json = tmp_path / "config.json"
        config_json.write_text(json.dumps({"output_dir": out, "report_to": "none", **SEARCH}))
        (from_json,) = parser.parse_json_file(str(config_json))

        assert from_python.search_space.distributions["learning_rate"] == optuna.distributions.FloatDistribution(
            5e-6, 5e-5, log=True
        )
        # Structured values arrive as JSON strings from the command line: the settings they resolve to agree.
        for args in (from_cli, from_yaml, from_json):
            assert args.search_space == from_python.search_space
            assert args.n_trials == 7 and args.timeout == 600.0 and args.direction == "maximize"
            assert args.objective_metric == "accuracy" and args.storage == "sqlite:///study.db"
            assert args.study_name == "sweep"
            settings = resolve_settings(args, storage="memory")
            reference = resolve_settings(from_python, storage="memory")
            assert settings.describe() == reference.describe()

    def test_every_field_has_help(self):
        import dataclasses

        fields = {f.name: f for f in dataclasses.fields(OptunaTrainingArguments)}
        for name in SEARCH_FIELDS:
            assert fields[name].metadata.get("help"), name
            assert name in OptunaTrainingArguments.__doc__, name
        help_text = io.StringIO()
        HfArgumentParser(OptunaTrainingArguments).print_help(help_text)
        # argparse wraps the help at the terminal's width: compare with the whitespace folded
        assert "StepPercentilePruner(percentile=35.0, n_min_trials=2)" in " ".join(help_text.getvalue().split())


class TestDefaults:
    def test_optuna_defaults_and_printed_settings(self, tmp_path, caplog):
        args = OptunaTrainingArguments(output_dir=str(tmp_path / "sweep-a"), report_to="none")
        assert args.sampler == "tpe" and args.pruner == "step_percentile" and args.n_trials == 20
        settings = resolve_settings(args)
        assert isinstance(settings.space.sampler, optuna.samplers.TPESampler)
        assert isinstance(settings.pruning.pruner, StepPercentilePruner)
        with caplog.at_level(logging.INFO, logger="optuna_trainer"):
            logging.getLogger("optuna_trainer").propagate = True
            try:
                settings.log()
            finally:
                logging.getLogger("optuna_trainer").propagate = False
        text = caplog.text
        assert "StepPercentilePruner(percentile=35.0, n_min_trials=2)" in text
        assert "TPESampler" in text and "eval_accuracy" in text and "maximize" in text
        assert "no hp_space given: using transformers' default space" in text
        assert "optuna_study.db" in text and "sweep-a" in text  # storage and study name are shown
        assert "defaults     sampler, pruner, prune_step, duplicates at the project's defaults" in text

    @pytest.mark.parametrize(
        "overrides,named",
        [
            # the main job's config spells the default pruner's settings out: still the default
            (
                {
                    "sampler": {"name": "tpe", "seed": 0},
                    "pruner": {"name": "step_percentile", "percentile": 35.0, "n_min_trials": 2},
                },
                "sampler, pruner, prune_step, duplicates at the project's defaults",
            ),
            (
                {"sampler": "random", "pruner": "median", "skip_duplicates": False},
                "prune_step at the project's default ",
            ),
            # no pruning: neither the pruner nor what it counts in is a default at work
            ({"pruner": "none"}, "sampler, duplicates at the project's defaults"),
            (
                {"prune_budget": "steps", "pruner": {"name": "step_percentile", "percentile": 25.0}},
                "sampler, duplicates at the project's defaults",
            ),
            (
                {
                    "sampler": optuna.samplers.TPESampler(seed=1),
                    "pruner": "median",
                    "prune_budget": "steps",
                    "skip_duplicates": False,
                },
                None,
            ),
        ],
    )
    def test_printed_settings_say_which_are_the_projects_defaults(self, tmp_path, overrides, named):
        args = OptunaTrainingArguments(output_dir=str(tmp_path), report_to="none", storage="memory", **overrides)
        described = resolve_settings(args).describe()
        if named is None:
            assert "defaults" not in described  # nothing left at a default: no line
        else:
            assert described["defaults"].startswith(named)
            assert list(described).index("defaults") == list(described).index("duplicates") + 1

    def test_call_overrides_arguments(self, tmp_path):
        args = OptunaTrainingArguments(output_dir=str(tmp_path), report_to="none", **SEARCH)
        settings = resolve_settings(
            args, n_trials=3, sampler="random", pruner="none", storage="memory", study_name="other", timeout=5
        )
        assert (
            settings.control.n_trials == 3 and settings.control.timeout == 5 and settings.storage.study_name == "other"
        )
        assert isinstance(settings.space.sampler, optuna.samplers.RandomSampler)
        assert isinstance(settings.pruning.pruner, optuna.pruners.NopPruner)
        assert settings.storage.storage is None  # memory

    def test_unknown_keyword_is_an_error(self, tmp_path):
        args = OptunaTrainingArguments(output_dir=str(tmp_path), report_to="none")
        with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['samplr'\]; accepted: \['sampler'"):
            resolve_settings(args, samplr="tpe")
        with pytest.raises(ValueError, match=r"n_jobs: 2 is not supported"):
            resolve_settings(args, n_jobs=2)


class TestTrialArguments:
    def test_values_do_not_leak_and_derived_fields_are_recomputed(self, tmp_path):
        args = OptunaTrainingArguments(
            output_dir=str(tmp_path), report_to="none", eval_strategy="steps", logging_steps=5, hp_space=SPACE
        )
        assert args.eval_steps == 5  # derived from logging_steps
        first = trial_arguments(args, {"logging_steps": 3, "weight_decay": 0.1}, str(tmp_path / "run-0"))
        second = trial_arguments(args, {"logging_steps": 7}, str(tmp_path / "run-1"))
        assert first.eval_steps == 3 and second.eval_steps == 7
        assert second.weight_decay == 0.0  # trial 0's value did not stay
        assert args.logging_steps == 5 and args.weight_decay == 0.0  # the user's arguments are untouched
        assert second.output_dir == str(tmp_path / "run-1")
        assert isinstance(second, OptunaTrainingArguments)

    def test_arguments_pickle_and_serialize_with_callable_space(self, tmp_path):
        args = OptunaTrainingArguments(
            output_dir=str(tmp_path),
            report_to="none",
            hp_space=lambda trial: {},
            sampler=optuna.samplers.RandomSampler(),
        )
        buffer = io.BytesIO()
        torch.save(args, buffer)  # what Trainer does with training_args.bin
        data = json.loads(args.to_json_string())
        assert data["hp_space"].startswith("<") and data["sampler"] == "<RandomSampler>"

    def test_password_is_masked_in_to_dict(self, tmp_path):
        args = OptunaTrainingArguments(
            output_dir=str(tmp_path), report_to="none", storage="postgresql+psycopg://user:hunter2@db:5432/optuna"
        )
        assert "hunter2" not in args.to_json_string()
        assert "postgresql+psycopg://user:***@db:5432/optuna" in args.to_json_string()


def test_plain_training_arguments_search_on_the_defaults(tmp_path):
    plain = TrainingArguments(
        output_dir=str(tmp_path), report_to="none", learning_rate=3e-4, eval_strategy="steps", logging_steps=4
    )
    settings = resolve_settings(plain, has_compute_metrics=True)
    assert isinstance(settings.pruning.pruner, StepPercentilePruner) and settings.control.n_trials == 20
    trial_args = trial_arguments(plain, {"weight_decay": 0.1}, output_dir=str(tmp_path / "run-0"))
    assert type(trial_args) is TrainingArguments and trial_args is not plain
    assert trial_args.learning_rate == 3e-4 and trial_args.eval_steps == 4 and trial_args.weight_decay == 0.1
    assert plain.weight_decay == 0.0  # the user's object is never changed by a trial


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"n_trials": 0}, r"n_trials: must be a positive whole number, got 0"),
        ({"timeout": -1}, r"timeout: must be a positive number of seconds"),
        ({"direction": "up"}, r"direction: 'up' is not one of"),
        ({"sampler": "tpee"}, r"sampler: unknown name 'tpee'"),
        ({"pruner": {"name": "median", "warmup": 1}}, r"pruner 'median': unknown argument\(s\) \['warmup'\]"),
        ({"storage": "postgres:/nohost"}, r"storage: malformed URL .postgres:/nohost.: a URL needs .://."),
        ({"storage": "ftp://host/db"}, r"storage: unknown scheme 'ftp'"),
        ({"hp_space": {"lr": {"type": "float", "low": 0.1, "high": 1}}}, r"hp_space\['lr'\]: not a field"),
        ({"hp_space": "missing.yaml"}, r"hp_space: 'missing.yaml' is neither an existing YAML/JSON file"),
        (
            {"sampler": "grid", "hp_space": {"learning_rate": {"type": "float", "low": 0.1, "high": 1}}},
            r"sampler grid: hp_space\['learning_rate'\] is a continuous float range",
        ),
        ({"objective_metric": " "}, r"objective_metric: must be a metric name"),
    ],
)
def test_bad_arguments_fail_at_construction(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        OptunaTrainingArguments(output_dir=str(tmp_path), report_to="none", **kwargs)
