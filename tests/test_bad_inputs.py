"""The bad-input table: every entry is rejected before any training, with a message that names the key, says what is
wrong and what would be right, and leaves no study in the storage.

Each case builds the arguments, the trainer and calls `hyperparameter_search()` against an SQLite file storage in a
temporary directory (or parses a config file); the error may come from any of these steps, but always before a
training step and before `optuna.create_study`. docs/errors.md lists the same table.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import tempfile
from typing import Any

import optuna
import pytest
from transformers import TrainerCallback

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from optuna_trainer.config import parse_config_file
from optuna_trainer.search.checks import check_output_dir
from tests.support import base_args, compute_metrics, make_dataset, tiny_model

LR = "learning_rate"


def _space(spec: Any, key: str = LR) -> dict[str, Any]:
    return {"hp_space": {key: spec}}


def _bad_callable_space(trial: optuna.Trial) -> dict[str, Any]:
    return {"learning_rte": trial.suggest_float("learning_rte", 1e-5, 1e-3, log=True)}


def _callable_space_not_dict(trial: optuna.Trial) -> Any:
    return [trial.suggest_float("learning_rate", 1e-5, 1e-3)]


@dataclasses.dataclass
class Case:
    """One bad input and the fragments its message must hold (regular expressions, case-insensitive)."""

    id: str
    args: dict[str, Any] = dataclasses.field(default_factory=dict)  # OptunaTrainingArguments overrides
    search: dict[str, Any] = dataclasses.field(default_factory=dict)  # hyperparameter_search() keyword arguments
    trainer: dict[str, Any] = dataclasses.field(default_factory=dict)  # OptunaTrainer keyword arguments
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # files written to tmp_path first
    config: str | None = None  # a config file (relative to tmp_path) parsed with parse_config_file
    key: str = ""  # the key/setting the message must name
    wrong: str = ""  # what is wrong
    right: str = ""  # what would be right
    error: type[Exception] | tuple[type[Exception], ...] = ValueError


CASES = [
    # ---- search-space specs ----------------------------------------------------------------------------------
    Case(
        "low_not_below_high",
        _space({"type": "float", "low": 0.1, "high": 0.01}),
        key=r"hp_space\['learning_rate'\]",
        wrong=r"low \(0\.1\) must be below high \(0\.01\)",
        right="fixed value",
    ),
    Case(
        "low_equals_high",
        _space({"type": "int", "low": 3, "high": 3}, "num_train_epochs"),
        key=r"hp_space\['num_train_epochs'\]",
        wrong=r"low \(3\) must be below high",
        right="set it in the training",
    ),
    Case(
        "log_with_zero_low",
        _space({"type": "float", "low": 0.0, "high": 1e-3, "log": True}),
        key=r"hp_space\['learning_rate'\]",
        wrong=r"log=true needs low > 0, got low=0",
        right="positive low",
    ),
    Case(
        "log_with_negative_low",
        _space({"type": "float", "low": -1e-3, "high": 1e-3, "log": True}),
        key=r"hp_space\['learning_rate'\]",
        wrong="log=true needs low > 0",
        right="use log=false or a positive low",
    ),
    Case(
        "int_log_with_zero_low",
        _space({"type": "int", "low": 0, "high": 8, "log": True}, "num_train_epochs"),
        key=r"hp_space\['num_train_epochs'\]",
        wrong="low=0",
        right="use log=false or low >= 1",
    ),
    Case(
        "empty_choices",
        _space({"type": "categorical", "choices": []}, "per_device_train_batch_size"),
        key=r"hp_space\['per_device_train_batch_size'\]",
        wrong=r"got \[\]",
        right="non-empty list",
    ),
    Case(
        "choices_not_a_list",
        _space({"type": "categorical", "choices": "8,16"}, "per_device_train_batch_size"),
        key=r"hp_space\['per_device_train_batch_size'\]",
        wrong="'8,16'",
        right="non-empty list",
    ),
    Case(
        "duplicate_choices",
        _space({"type": "categorical", "choices": [8, 8]}, "per_device_train_batch_size"),
        key=r"hp_space\['per_device_train_batch_size'\]",
        wrong=r"choices \[8, 8\] contain duplicates",
        right="list each choice once",
    ),
    Case(
        "unknown_type",
        _space({"type": "uniform", "low": 1e-5, "high": 1e-3}),
        key=r"hp_space\['learning_rate'\]",
        wrong="type 'uniform'",
        right=r"\['float', 'int', 'categorical'\]",
    ),
    Case(
        "missing_type",
        _space({"low": 1e-5, "high": 1e-3}),
        key=r"hp_space\['learning_rate'\]",
        wrong="type None",
        right=r"\['float', 'int', 'categorical'\]",
    ),
    Case(
        "unknown_spec_field",
        _space({"type": "float", "low": 1e-5, "high": 1e-3, "lg": True}),
        key=r"hp_space\['learning_rate'\]",
        wrong=r"unknown field\(s\) \['lg'\]",
        right="allowed: .*'log'",
    ),
    Case(
        "spec_not_a_mapping",
        _space(0.001),
        key=r"hp_space\['learning_rate'\]",
        wrong="got float 0.001",
        right=r"spec like \{type: float",
    ),
    Case(
        "step_larger_than_range",
        _space({"type": "float", "low": 0.0, "high": 0.1, "step": 0.5}, "weight_decay"),
        key=r"hp_space\['weight_decay'\]",
        wrong=r"step \(0\.5\) is larger than the range",
        right="at most 0.1",
    ),
    Case(
        "step_not_positive",
        _space({"type": "int", "low": 1, "high": 4, "step": 0}, "num_train_epochs"),
        key=r"hp_space\['num_train_epochs'\]",
        wrong="got 0",
        right="positive number",
    ),
    Case(
        "non_numeric_low",
        _space({"type": "float", "low": "small", "high": 1e-3}),
        key=r"hp_space\['learning_rate'\]",
        wrong="got 'small'",
        right="must be a number",
    ),
    Case(
        "yaml_bound_not_a_number",
        files={"space.yaml": "learning_rate: {type: float, low: tiny, high: 1.0e-3}\n"},
        args={"hp_space": "{tmp}/space.yaml"},
        key=r"hp_space\['learning_rate'\]",
        wrong="got 'tiny'",
        right="must be a number",
    ),
    Case(
        "missing_high",
        _space({"type": "float", "low": 1e-5}),
        key=r"hp_space\['learning_rate'\]",
        wrong="high is required",
        right="type float",
    ),
    Case(
        "int_with_fractional_bound",
        _space({"type": "int", "low": 1.5, "high": 4}, "num_train_epochs"),
        key=r"hp_space\['num_train_epochs'\]",
        wrong="got 1.5",
        right="whole number .* use type float",
    ),
    Case("empty_space", {"hp_space": {}}, key="hp_space", wrong="empty", right="declare at least one parameter"),
    Case(
        "space_json_broken",
        {"hp_space": '{"learning_rate": '},
        key="hp_space",
        wrong="not valid JSON .*line 1 column 18",
        right="fix the JSON there, or give the path of a YAML/JSON file",
    ),
    Case(
        "space_file_missing",
        {"hp_space": "{tmp}/no_such_space.yaml"},
        key="hp_space",
        wrong="neither an existing YAML/JSON file",
        right="inline JSON object",
    ),
    # ---- keys: a TrainingArguments field or model.<attribute>, with a value of the field's type --------------
    Case(
        "key_not_a_field",
        _space({"type": "float", "low": 1e-5, "high": 1e-3}, "learning_rte"),
        key=r"hp_space\['learning_rte'\]",
        wrong="not a field of OptunaTrainingArguments",
        right="did you mean 'learning_rate'",
    ),
    Case(
        "key_fixed_for_the_search",
        _space({"type": "categorical", "choices": ["a", "b"]}, "output_dir"),
        key=r"hp_space\['output_dir'\]",
        wrong="fixed for the whole search",
        right="set it in the training arguments",
    ),
    Case(
        "model_attribute_unknown",
        _space({"type": "float", "low": 0.0, "high": 0.3}, "model.hidden_dropout"),
        key=r"hp_space\['model\.hidden_dropout'\]",
        wrong="BertConfig has no attribute 'hidden_dropout'",
        right="did you mean 'model.hidden_dropout_prob'",
    ),
    Case(
        "model_key_malformed",
        _space({"type": "float", "low": 0.0, "high": 0.3}, "model.hidden-dropout"),
        key=r"hp_space\['model\.hidden-dropout'\]",
        wrong="expected model.<config attribute>",
        right="e.g. model.hidden_dropout_prob",
    ),
    Case(
        "float_range_for_an_int_field",
        _space({"type": "float", "low": 4, "high": 32}, "per_device_train_batch_size"),
        key=r"hp_space\['per_device_train_batch_size'\]",
        wrong="type float does not fit the field's type int",
        right="use type: int",
    ),
    Case(
        "choice_of_the_wrong_type",
        _space({"type": "categorical", "choices": [0.1, "high"]}, "weight_decay"),
        key=r"hp_space\['weight_decay'\]",
        wrong=r"choice 'high' \(str\) does not fit the field's type float",
        right="choices of that type",
    ),
    Case(
        "callable_space_unknown_key",
        search={"hp_space": _bad_callable_space},
        key=r"hp_space\['learning_rte'\]",
        wrong="not a field",
        right="did you mean 'learning_rate'",
    ),
    Case(
        "callable_space_not_a_dict",
        search={"hp_space": _callable_space_not_dict},
        error=TypeError,
        key="hp_space",
        wrong="got list",
        right="must return a dict",
    ),
    # ---- samplers and pruners ------------------------------------------------------------------------------
    Case(
        "sampler_unknown_name",
        {"sampler": "tpee"},
        key="sampler",
        wrong="unknown name 'tpee'",
        right=r"valid names: \[.*'tpe'",
    ),
    Case(
        "sampler_unknown_argument",
        {"sampler": {"name": "tpe", "seeed": 0}},
        key="sampler 'tpe'",
        wrong=r"unknown argument\(s\) \['seeed'\]",
        right="TPESampler takes .*'seed'",
    ),
    Case(
        "sampler_argument_of_wrong_type",
        {"sampler": {"name": "random", "seed": "abc"}},
        key="sampler 'random'",
        wrong="Cannot cast",
        right=r"RandomSampler takes \(seed: .*int",
    ),
    Case(
        "sampler_dict_without_name",
        {"sampler": {"seed": 0}},
        key="sampler",
        wrong="needs a 'name' key",
        right=r"e\.g\. \{'name': 'tpe'\}",
    ),
    Case(
        "sampler_json_broken",
        {"sampler": '{"name": "tpe",'},
        key="sampler",
        wrong="not valid JSON .*column 16",
        right=r'fix the JSON there, e\.g\. \{"name": "tpe"',
    ),
    Case(
        "grid_over_continuous_range",
        {"sampler": "grid", **_space({"type": "float", "low": 1e-5, "high": 1e-3})},
        key=r"hp_space\['learning_rate'\]",
        wrong="continuous float range",
        right="give it a step or make it categorical",
    ),
    Case(
        "grid_with_callable_space",
        {"sampler": "grid"},
        search={"hp_space": _bad_callable_space},
        key="sampler 'grid'",
        wrong="callable hp_space has no grid",
        right="'search_space'",
    ),
    Case(
        "pruner_unknown_name",
        {"pruner": "mediam"},
        key="pruner",
        wrong="unknown name 'mediam'",
        right=r"valid names: \[.*'median'",
    ),
    Case(
        "pruner_unknown_argument",
        {"pruner": {"name": "median", "n_startup": 5}},
        key="pruner 'median'",
        wrong=r"unknown argument\(s\) \['n_startup'\]",
        right="'n_startup_trials'",
    ),
    Case(
        "pruner_argument_out_of_range",
        {"pruner": {"name": "median", "n_startup_trials": -1}},
        key="pruner 'median'",
        wrong="cannot be negative",
        right="MedianPruner takes",
    ),
    Case(
        "pruner_patient_without_patience",
        {"pruner": {"name": "patient"}},
        key="pruner 'patient'",
        wrong="'patience' is required",
        right=r"'patience': 2",
    ),
    Case(
        "pruner_of_wrong_type",
        {"pruner": 3},
        error=TypeError,
        key="pruner",
        wrong="got int",
        right="expected a name, a dict",
    ),
    # ---- direction and objective ---------------------------------------------------------------------------
    Case(
        "direction_unknown",
        {"direction": "max"},
        key="direction",
        wrong="'max' is not one of",
        right=r"\['minimize', 'maximize'\]",
    ),
    Case(
        "direction_contradicts_loss_metric",
        {"objective_metric": "loss", "direction": "maximize"},
        key="direction",
        wrong="'maximize' contradicts 'eval_loss' is a loss",
        right="use direction='minimize'",
    ),
    Case(
        "several_directions_without_compute_objective",
        search={"direction": ["minimize", "maximize"]},
        key="direction",
        wrong="names 2 objectives",
        right="compute_objective that returns one value per direction",
    ),
    Case(
        "objective_metric_without_compute_metrics",
        {"objective_metric": "f1"},
        trainer={"compute_metrics": None},
        key="objective_metric",
        wrong="'eval_f1' cannot be computed",
        right="pass compute_metrics= returning 'f1'",
    ),
    Case(
        "objective_metric_empty",
        {"objective_metric": " "},
        key="objective_metric",
        wrong="empty string",
        right="metric name such as 'accuracy'",
    ),
    # ---- trials, time, datasets, call ----------------------------------------------------------------------
    Case("n_trials_zero", {"n_trials": 0}, key="n_trials", wrong="got 0", right="positive whole number"),
    Case(
        "n_trials_negative_in_call",
        search={"n_trials": -3},
        key="n_trials",
        wrong="got -3",
        right="positive whole number",
    ),
    Case(
        "n_trials_not_a_number",
        {"n_trials": "many"},
        key="n_trials",
        wrong="got 'many'",
        right="positive whole number",
    ),
    Case("timeout_zero", {"timeout": 0}, key="timeout", wrong="got 0", right="positive number of seconds or None"),
    Case(
        "timeout_negative_in_call",
        search={"timeout": -5},
        key="timeout",
        wrong="got -5",
        right="positive number of seconds or None",
    ),
    Case(
        "catch_not_exception_classes",
        search={"catch": ["ValueError"]},
        error=TypeError,
        key="catch",
        wrong="got 'ValueError'",
        right=r"catch=\(ValueError,\)",
    ),
    Case(
        "unknown_search_keyword",
        search={"n_job": 2},
        error=TypeError,
        key="hyperparameter_search",
        wrong=r"unexpected keyword argument\(s\) \['n_job'\]",
        right="accepted: .*'n_jobs'",
    ),
    Case(
        "no_eval_dataset",
        {"eval_strategy": "no"},
        trainer={"eval_dataset": None},
        key="eval_dataset",
        wrong="scored by an evaluation",
        right="pass eval_dataset=",
    ),
    # ---- storage ---------------------------------------------------------------------------------------------
    Case(
        "artifact_store_unknown_scheme",
        {"artifact_store": "gs://bucket/searches"},
        key="artifact_store",
        wrong="unknown scheme 'gs'",
        right="s3://bucket/prefix",
    ),
    Case(
        "artifact_store_cannot_be_created",
        {"artifact_store": "{tmp}/a-file/store"},
        files={"a-file": ""},
        key="artifact_store",
        wrong=r"cannot create the directory .* \(Not a directory\)",
        right="give a directory this user can create and write",
    ),
    Case(
        "storage_unknown_scheme",
        {"storage": "postgress://localhost/db"},
        key="storage",
        wrong="unknown scheme 'postgress'",
        right=r"postgresql\+psycopg://",
    ),
    Case(
        "storage_malformed_url",
        {"storage": "postgresql://user:secret@host:port/db"},
        key="storage",
        wrong=r"malformed URL 'postgresql://user:\*\*\*@host:port/db'",
        right="dialect\\+driver://user:password@host:port",
    ),
    Case(
        "storage_sqlite_path_without_scheme",
        {"storage": "{tmp}/study.db"},
        key="storage",
        wrong="looks like an SQLite file",
        right="sqlite:///",
    ),
    Case(
        "storage_empty",
        {"storage": " "},
        key="storage",
        wrong="got ' '",
        right="a storage URL, a journal file path or 'memory'",
    ),
    # ---- config files ----------------------------------------------------------------------------------------
    Case(
        "config_file_missing",
        config="no_such_config.yaml",
        key="config file '.*no_such_config.yaml'",
        wrong="does not exist",
        right="existing .yaml, .yml or .json file",
    ),
    Case(
        "config_file_broken_yaml",
        files={"c.yaml": "output_dir: out\nn_trials: [1, 2\n"},
        config="c.yaml",
        key="config file '.*c.yaml'",
        wrong="not valid YAML: .* at line",
        right="fix the YAML there",
    ),
    Case(
        "config_file_broken_json",
        files={"c.json": '{"output_dir": "out",}'},
        config="c.json",
        key="config file '.*c.json'",
        wrong="not valid JSON: .* line 1",
        right="fix the JSON there",
    ),
    Case(
        "config_file_python_tag",
        files={"c.yaml": "output_dir: !!python/object/apply:os.getcwd []\n"},
        config="c.yaml",
        key="config file '.*c.yaml'",
        wrong="could not determine a constructor .* at line 1",
        right="plain data",
    ),
    Case(
        "config_file_unknown_key",
        files={"c.yaml": "output_dir: out\nn_trails: 5\n"},
        config="c.yaml",
        key="'n_trails'",
        wrong="unknown key",
        right="did you mean 'n_trials'",
    ),
    Case(
        "config_file_not_a_mapping",
        files={"c.yaml": "- output_dir\n- out\n"},
        config="c.yaml",
        key="config file '.*c.yaml'",
        wrong="got list",
        right="mapping of argument name -> value",
    ),
    Case(
        "config_file_bad_value",
        files={"c.yaml": "output_dir: out\nn_trials: many\n"},
        config="c.yaml",
        key="config file '.*c.yaml': n_trials",
        wrong="got 'many'",
        right="positive whole number",
    ),
    Case(
        "space_file_python_tag",
        files={"s.yaml": "learning_rate: !!python/object/apply:os.getcwd []\n"},
        args={"hp_space": "{tmp}/s.yaml"},
        key="hp_space",
        wrong="could not determine a constructor",
        right="plain data",
    ),
    # ---- values the arguments class or the model would refuse, tried before the study ------------------------
    Case(
        "searched_save_strategy_invalid",
        _space({"type": "categorical", "choices": ["steps", "sometimes"]}, "save_strategy"),
        key=r"hp_space\['save_strategy'\]",
        wrong="refuses 'sometimes'",
        right="select one of",
    ),
    Case(
        "searched_optim_invalid",
        _space({"type": "categorical", "choices": ["adamw_torch", "adamw_nope"]}, "optim"),
        key=r"hp_space\['optim'\]",
        wrong="refuses 'adamw_nope'",
        right="adamw_torch",
    ),
    Case(
        "searched_lr_scheduler_invalid",
        _space({"type": "categorical", "choices": ["linear", "zigzag"]}, "lr_scheduler_type"),
        key=r"hp_space\['lr_scheduler_type'\]",
        wrong="refuses 'zigzag'",
        right="cosine",
    ),
    Case(
        "model_value_wrong_type",
        _space({"type": "categorical", "choices": ["high", 0.1]}, "model.hidden_dropout_prob"),
        key=r"hp_space\['model.hidden_dropout_prob'\]",
        wrong="'high' \\(str\\) does not fit",
        right="holds 0.1 \\(float\\)",
    ),
    Case(
        "model_value_not_finite",
        _space({"type": "categorical", "choices": [float("nan"), 0.1]}, "model.hidden_dropout_prob"),
        key=r"hp_space\['model.hidden_dropout_prob'\]",
        wrong="nan",
        right="finite number",
    ),
    Case(
        "model_key_names_a_method",
        _space({"type": "categorical", "choices": [1, 2]}, "model.to_dict"),
        key=r"hp_space\['model.to_dict'\]",
        wrong="is a method",
        right="search a config value",
    ),
    Case(
        "model_key_dunder",
        _space({"type": "categorical", "choices": [1, 2]}, "model.__class__"),
        key=r"hp_space\['model.__class__'\]",
        wrong="private",
        right="public config attribute",
    ),
    Case(
        "model_key_changes_weight_shapes",
        _space({"type": "int", "low": 1, "high": 3}, "model.num_hidden_layers"),
        key=r"hp_space\['model.num_hidden_layers'\]",
        wrong="changes the model's weights",
        right="keep their shapes",
    ),
    # ---- sampler/pruner arguments Optuna only rejects when used -----------------------------------------------
    Case(
        "tpe_startup_trials_string",
        {"sampler": {"name": "tpe", "n_startup_trials": "1"}},
        key="n_startup_trials",
        wrong="got '1' \\(str\\)",
        right="whole number",
    ),
    Case(
        "grid_space_not_matching",
        {
            "sampler": {"name": "grid", "search_space": {"weight_decay": [0.0, 0.1]}},
            "hp_space": {LR: {"type": "categorical", "choices": [1e-3, 1e-2]}},
        },
        key="sampler 'grid'",
        wrong="does not match hp_space",
        right="same keys",
    ),
    Case(
        "grid_space_not_a_mapping",
        {
            "sampler": {"name": "grid", "search_space": [1, 2]},
            "hp_space": {LR: {"type": "categorical", "choices": [1e-3]}},
        },
        key="sampler 'grid'",
        wrong="got list",
        right="mapping of name",
    ),
    Case(
        "hyperband_min_resource_zero",
        {"pruner": {"name": "hyperband", "min_resource": 0}},
        key="min_resource",
        wrong="got 0",
        right=">= 1",
    ),
    # ---- keys and values of the search itself ----------------------------------------------------------------
    Case(
        "search_field_as_key",
        _space({"type": "categorical", "choices": [True, False]}, "save_best_model"),
        key=r"hp_space\['save_best_model'\]",
        wrong="fixed for the whole search",
        right="set it in the training arguments",
    ),
    Case(
        "heartbeat_field_as_key",
        _space({"type": "categorical", "choices": [10, 20]}, "heartbeat_interval"),
        key=r"hp_space\['heartbeat_interval'\]",
        wrong="cannot be searched",
        right="set it in the training arguments",
    ),
    Case(
        "two_keys_for_one_field",
        {
            "hp_space": {
                "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.1},
                "warmup_steps": {"type": "int", "low": 0, "high": 3},
            }
        },
        key="'warmup_ratio' and 'warmup_steps'",
        wrong="both set warmup_steps",
        right="search one of them",
    ),
    Case(
        "duplicate_key_in_space_file",
        files={
            "s.yaml": "learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3}\nlearning_rate: {type: float, low: 0.1, high: 0.2}\n"
        },
        args={"hp_space": "{tmp}/s.yaml"},
        key="hp_space",
        wrong="'learning_rate' is given twice.*line 2",
        right="keep one",
    ),
    Case(
        "duplicate_key_in_inline_json",
        {"hp_space": '{"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}, "learning_rate": {}}'},
        key="hp_space",
        wrong="given twice",
        right="keep one",
    ),
    Case(
        "duplicate_key_in_config_file",
        config="c.json",
        files={"c.json": '{"output_dir": "out", "n_trials": 3, "n_trials": 5}'},
        key="config file",
        wrong="'n_trials' is given twice",
        right="keep one",
    ),
    Case(
        "empty_train_dataset",
        trainer={"train_dataset": make_dataset(8).select([])},
        key="train_dataset",
        wrong="is empty",
        right="needs examples",
    ),
    Case(
        "empty_eval_dataset",
        trainer={"eval_dataset": make_dataset(8).select([])},
        key="eval_dataset",
        wrong="is empty",
        right="needs examples",
    ),
    Case(
        "timeout_string_in_arguments",
        {"timeout": "10"},
        key="timeout",
        wrong="got '10'",
        right="positive number of seconds",
    ),
    Case(
        "heartbeat_beyond_a_timestamp",
        {"heartbeat_interval": 10**12},
        key="heartbeat_interval",
        wrong="got 1000000000000",
        right="to 604800",
    ),
    Case(
        "prune_budget_tokens",
        {"prune_budget": "tokens"},
        key="prune_budget",
        wrong="'tokens' is not one of",
        right="'samples' reports each evaluation at the training samples seen",
    ),
    Case(
        "prune_metric_empty",
        {"prune_metric": " "},
        key="prune_metric",
        wrong="got ' '",
        right="a metric name such as 'loss'",
    ),
    Case(
        "prune_metric_without_compute_metrics",
        {"prune_metric": "f1"},
        trainer={"compute_metrics": None},
        key="prune_metric",
        wrong="'eval_f1' cannot be computed",
        right="set prune_metric='loss'",
    ),
    Case(
        "target_value_not_finite",
        {"target_value": float("inf")},
        key="target_value",
        wrong="got inf",
        right="a finite number",
    ),
    Case(
        "trials_without_improvement_zero",
        {"trials_without_improvement": 0},
        key="trials_without_improvement",
        wrong="got 0",
        right="a positive whole number of trials",
    ),
    Case(
        "target_value_with_two_objectives",
        {"target_value": 0.9},
        search={
            "direction": ["maximize", "minimize"],
            "compute_objective": lambda m: (m["eval_accuracy"], m["eval_loss"]),
        },
        key="target_value",
        wrong="there are 2",
        right="search a single objective",
    ),
    Case(
        "storage_sqlite_in_memory",
        {"storage": "sqlite://"},
        key="storage",
        wrong="in-memory SQLite database",
        right="storage='memory'",
    ),
    Case(
        "storage_journal_path_is_a_directory",
        {"storage": "{tmp}"},
        key="storage",
        wrong="is a directory",
        right="give a file path",
    ),
    Case(
        "study_name_too_long",
        {"study_name": "x" * 600},
        key="study_name",
        wrong="600 characters",
        right="at most 512",
    ),
    Case(
        "storage_password_unencoded_at",
        args={"storage": "postgresql+psycopg://u:pa@ss@127.0.0.1:5432/test"},
        key="storage",
        wrong="unencoded '@'",
        right="%40",
    ),
    Case(
        "space_file_billion_laughs",
        files={
            "s.yaml": 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n'
        },
        args={"hp_space": "{tmp}/s.yaml"},
        key="hp_space",
        wrong="more than 100000 values",
        right="write the values out",
    ),
    Case(
        "space_file_nested_too_deep",
        files={"s.json": "[" * 50000 + "]" * 50000},
        args={"hp_space": "{tmp}/s.json"},
        key="hp_space",
        wrong="nested too deeply",
        right="flatten the file",
    ),
    Case(
        "space_inline_json_nested_too_deep",
        args={"hp_space": '{"learning_rate": ' + "[" * 50000 + "]" * 50000 + "}"},
        key="hp_space",
        wrong="nested too deeply",
        right="give the path of a YAML/JSON file",
    ),
]


class Recorder(TrainerCallback):
    """Counts every training start and step."""

    def __init__(self) -> None:
        self.train_begins = 0
        self.steps = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_begins += 1

    def on_step_begin(self, args, state, control, **kwargs):
        self.steps += 1


def _fill(value: Any, tmp: str) -> Any:
    return value.replace("{tmp}", tmp) if isinstance(value, str) else value


def _studies_left(tmp_path) -> list[str]:
    names: list[str] = []
    for db in glob.glob(os.path.join(tmp_path, "**", "*.db"), recursive=True):
        names += [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{db}")]
    return names


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_rejected_before_training(case: Case, tmp_path) -> None:
    tmp = str(tmp_path)
    for name, text in case.files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    recorder = Recorder()
    with pytest.raises(case.error) as info:
        if case.config is not None:
            parse_config_file(os.path.join(tmp, case.config))
        else:
            values = base_args(tmp_path / "out", storage=f"sqlite:///{tmp}/study.db", n_trials=2)
            values.update({k: _fill(v, tmp) for k, v in case.args.items()})
            trainer_kwargs: dict[str, Any] = dict(
                model_init=tiny_model,
                train_dataset=make_dataset(32),
                eval_dataset=make_dataset(16, seed=1),
                compute_metrics=compute_metrics,
                callbacks=[recorder],
            )
            trainer_kwargs.update(case.trainer)
            trainer = OptunaTrainer(args=OptunaTrainingArguments(**values), **trainer_kwargs)
            trainer.hyperparameter_search(**case.search)
    message = str(info.value)
    for part in ("key", "wrong", "right"):
        pattern = getattr(case, part)
        assert pattern, f"case {case.id} must say which {part} its message holds"
        assert re.search(pattern, message, flags=re.I | re.S), f"{part}: {pattern!r} not in {message!r}"
    assert (recorder.train_begins, recorder.steps) == (0, 0)
    assert _studies_left(tmp_path) == []
    # docs/errors.md shows this very message (the temporary folder written as /tmp/x).
    shown = f"{type(info.value).__name__}: {message}".replace(tmp, "/tmp/x").replace("\n", " ")
    if os.environ.get("OPTUNA_TRAINER_WRITE_ERRORS_DOC"):
        with open(os.environ["OPTUNA_TRAINER_WRITE_ERRORS_DOC"], "a", encoding="utf-8") as f:
            f.write(json.dumps([case.id, shown]) + "\n")
    else:
        assert _documented().get(case.id) == shown, f"docs/errors.md: the row of {case.id} is out of date"


def _documented() -> dict[str, str]:
    """The message column of docs/errors.md's table of bad inputs, by case id."""
    rows: dict[str, str] = {}
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "errors.md"), encoding="utf-8") as f:
        for line in f:
            match = re.match(r"^\| `([a-z0-9_]+)` \| `.*`(?: \([^|]*\))? \| (.*) \|$", line.rstrip("\n"))
            if match:
                rows[match.group(1)] = match.group(2).replace("\\|", "|")
    return rows


def test_the_table_is_large_enough() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 30


class TestObjectiveMetricAbsentAtFirstEvaluation:
    """The one bad input that shows only at the first evaluation: compute_metrics does not return the metric."""

    def test_fails_one_trial_clearly_and_keeps_the_study_usable(self, tmp_path) -> None:
        storage = f"sqlite:///{tmp_path}/study.db"
        recorder = Recorder()

        def acc_only(pred: Any) -> dict[str, float]:
            return {"acc": compute_metrics(pred)["accuracy"]}

        args = OptunaTrainingArguments(
            **base_args(tmp_path / "out", storage=storage, study_name="s", n_trials=3, objective_metric="accuracy")
        )
        trainer = OptunaTrainer(
            model_init=tiny_model,
            args=args,
            train_dataset=make_dataset(32),
            eval_dataset=make_dataset(16, seed=1),
            compute_metrics=acc_only,
            callbacks=[recorder],
        )
        with pytest.raises(ValueError) as info:
            trainer.hyperparameter_search()
        message = str(info.value)
        assert "objective_metric: 'eval_accuracy' is not among the evaluation metrics" in message
        assert "'eval_acc'" in message and "set objective_metric (or metric_for_best_model) to one of them" in message
        study = optuna.load_study(study_name="s", storage=storage)
        (trial,) = study.trials
        # Trained up to the first evaluation only (at 16 samples: eval_steps=2 at batch 8, 4 at batch 4, 1 at batch
        # 16 or more), then stopped the search: the error would repeat in every trial.
        assert recorder.steps == trial.user_attrs["steps"] >= 1
        assert (
            trial.user_attrs["samples"] >= 16
            and trial.user_attrs["samples"] - trial.user_attrs["samples_per_step"] < 16
        )
        assert trial.state == optuna.trial.TrialState.FAIL
        assert trial.user_attrs["fail_reason"].startswith("ValueError: objective_metric: 'eval_accuracy'")
        assert trial.intermediate_values == {}

        # The study is intact: the same search with the metric fixed resumes in it and completes.
        args = OptunaTrainingArguments(
            **base_args(tmp_path / "out", storage=storage, study_name="s", n_trials=2, objective_metric="acc")
        )
        trainer = OptunaTrainer(
            model_init=tiny_model,
            args=args,
            train_dataset=make_dataset(32),
            eval_dataset=make_dataset(16, seed=1),
            compute_metrics=acc_only,
        )
        best = trainer.hyperparameter_search()
        states = [t.state.name for t in optuna.load_study(study_name="s", storage=storage).trials]
        assert states == ["FAIL", "COMPLETE", "COMPLETE"]
        assert 0.0 <= best.objective <= 1.0


# An existing folder that even root cannot write in (tests run as root, for whom chmod does not stop writes).
READ_ONLY_FOLDER = "/sys/kernel"


def _can_write_in(folder: str) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


class TestUnwritableOutputDir:
    """Every search writes under output_dir (runs, best model, report), whatever its storage: one it cannot write is
    refused before the first training step, not at the first save."""

    @pytest.mark.parametrize(
        ("storage", "message"),
        [
            (
                "memory",
                r"^output_dir: cannot write to '/sys/kernel' \(PermissionError.*give a folder the search can write",
            ),
            # The default SQLite file lives under the same folder: output_dir is checked before any storage opens.
            (
                None,
                r"^output_dir: cannot write to '/sys/kernel' \(PermissionError.*give a folder the search can write",
            ),
        ],
        ids=["memory", "default_sqlite"],
    )
    def test_an_existing_folder_it_cannot_write_is_refused_before_training(
        self, storage: str | None, message: str
    ) -> None:
        if not os.path.isdir(READ_ONLY_FOLDER) or _can_write_in(READ_ONLY_FOLDER):
            pytest.skip(f"{READ_ONLY_FOLDER} is not a folder that refuses new files here")
        recorder = Recorder()
        built: list[int] = []

        def counted_model() -> Any:
            built.append(1)
            return tiny_model()

        trainer = OptunaTrainer(
            model_init=counted_model,
            args=OptunaTrainingArguments(**base_args(READ_ONLY_FOLDER, storage=storage, n_trials=2)),
            train_dataset=make_dataset(32),
            eval_dataset=make_dataset(16, seed=1),
            compute_metrics=compute_metrics,
            callbacks=[recorder],
        )
        built.clear()  # the trainer builds one model at construction; each trial would build another
        with pytest.raises(ValueError, match=message):
            trainer.hyperparameter_search()
        assert (recorder.train_begins, recorder.steps, len(built)) == (0, 0, 0)
        assert trainer.study is None

    def test_a_file_in_the_path_is_refused(self, tmp_path) -> None:
        # Trainer's __init__ creates output_dir, so this shows only when it changes after (or, under DDP, on the
        # process that saves); the check itself refuses it.
        (tmp_path / "a_file").write_text("not a folder", encoding="utf-8")
        args = OptunaTrainingArguments(**base_args(tmp_path / "out"))
        args.output_dir = str(tmp_path / "a_file" / "out")
        with pytest.raises(ValueError, match=r"^output_dir: cannot create .*a_file.* exists and is not a folder"):
            check_output_dir(args)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]

    def test_a_folder_still_to_create_under_a_writable_one_passes_and_is_not_created(self, tmp_path) -> None:
        args = OptunaTrainingArguments(**base_args(tmp_path / "out"))
        args.output_dir = str(tmp_path / "new" / "deeper")
        check_output_dir(args)
        assert list(tmp_path.iterdir()) == []
