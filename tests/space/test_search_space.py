from __future__ import annotations

import json

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from optuna_trainer import OptunaTrainingArguments, SearchSpace
from optuna_trainer.space.search_space import check_key, check_model_keys, split_params
from tests.support import tiny_config

SEED_SPACE_YAML = """
learning_rate: {type: float, low: 5.0e-6, high: 5.0e-5, log: true}
per_device_train_batch_size: {type: categorical, choices: [64, 128, 256]}
weight_decay: {type: float, low: 0.005, high: 0.05}
num_train_epochs: {type: int, low: 1, high: 4}
warmup_ratio: {type: float, low: 0.0, high: 0.2, step: 0.05}
model.hidden_dropout_prob: {type: float, low: 0.0, high: 0.3}
"""

EXPECTED = {
    "learning_rate": FloatDistribution(5e-6, 5e-5, log=True),
    "per_device_train_batch_size": CategoricalDistribution([64, 128, 256]),
    "weight_decay": FloatDistribution(0.005, 0.05),
    "num_train_epochs": IntDistribution(1, 4),
    "warmup_ratio": FloatDistribution(0.0, 0.2, step=0.05),
    "model.hidden_dropout_prob": FloatDistribution(0.0, 0.3),
}


class TestParse:
    def test_yaml_file(self, tmp_path):
        path = tmp_path / "space.yaml"
        path.write_text(SEED_SPACE_YAML)
        space = SearchSpace.parse(str(path), OptunaTrainingArguments)
        assert space.distributions == EXPECTED
        assert list(space.distributions) == list(EXPECTED)  # declaration order kept

    def test_json_file_json_string_and_dict_agree(self, tmp_path):
        import yaml

        mapping = yaml.safe_load(SEED_SPACE_YAML)
        path = tmp_path / "space.json"
        path.write_text(json.dumps(mapping))
        from_file = SearchSpace.parse(path, OptunaTrainingArguments)
        from_string = SearchSpace.parse(json.dumps(mapping), OptunaTrainingArguments)
        from_dict = SearchSpace.parse(mapping, OptunaTrainingArguments)
        assert from_file.distributions == from_string.distributions == from_dict.distributions == EXPECTED

    def test_to_dict_round_trips(self):
        space = SearchSpace.parse(SEED_SPACE_YAML_DICT(), OptunaTrainingArguments)
        assert SearchSpace.parse(space.to_dict(), OptunaTrainingArguments).distributions == space.distributions

    def test_model_keys(self):
        space = SearchSpace.parse(SEED_SPACE_YAML_DICT(), OptunaTrainingArguments)
        assert space.model_keys == {"model.hidden_dropout_prob": "hidden_dropout_prob"}
        check_model_keys(space.distributions, tiny_config())
        with pytest.raises(ValueError, match=r"model.not_an_attr.*BertConfig has no attribute 'not_an_attr'"):
            check_model_keys(["model.not_an_attr"], tiny_config())

    def test_split_params(self):
        args, model = split_params({"learning_rate": 0.1, "model.hidden_dropout_prob": 0.2})
        assert args == {"learning_rate": 0.1}
        assert model == {"hidden_dropout_prob": 0.2}


def SEED_SPACE_YAML_DICT():
    import yaml

    return yaml.safe_load(SEED_SPACE_YAML)


class TestSuggest:
    def test_samples_lie_inside_and_steps_hold(self):
        space = SearchSpace.parse(SEED_SPACE_YAML_DICT(), OptunaTrainingArguments)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
        for _ in range(30):
            trial = study.ask()
            values = space.suggest(trial)
            assert 5e-6 <= values["learning_rate"] <= 5e-5
            assert values["per_device_train_batch_size"] in (64, 128, 256)
            assert 1 <= values["num_train_epochs"] <= 4 and isinstance(values["num_train_epochs"], int)
            assert round(values["warmup_ratio"] / 0.05, 6).is_integer()
            assert set(trial.distributions) == set(EXPECTED)
            study.tell(trial, 0.0)

    def test_grid(self):
        space = SearchSpace.parse(
            {
                "per_device_train_batch_size": {"type": "categorical", "choices": [8, 16]},
                "num_train_epochs": {"type": "int", "low": 1, "high": 5, "step": 2},
                "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.05},
            },
            OptunaTrainingArguments,
        )
        assert space.grid() == {
            "per_device_train_batch_size": [8, 16],
            "num_train_epochs": [1, 3, 5],
            "warmup_ratio": [0.0, 0.05, 0.1, 0.15, 0.2],
        }

    def test_grid_of_continuous_range_is_an_error(self):
        space = SearchSpace.parse(
            {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}}, OptunaTrainingArguments
        )
        with pytest.raises(
            ValueError, match=r"hp_space\['learning_rate'\] is a continuous float range.*give it a step"
        ):
            space.grid()


BAD_SPECS = [
    (
        {"learning_rate": {"type": "float", "low": 0.1, "high": 0.01}},
        r"hp_space\['learning_rate'\]: low \(0.1\) must be below high \(0.01\)",
    ),
    (
        {"learning_rate": {"type": "float", "low": 0.0, "high": 0.1, "log": True}},
        r"\['learning_rate'\]: log=true needs low > 0",
    ),
    (
        {"per_device_train_batch_size": {"type": "categorical", "choices": []}},
        r"\['per_device_train_batch_size'\]: choices must be a non-empty list",
    ),
    (
        {"per_device_train_batch_size": {"type": "categorical", "choices": 8}},
        r"choices must be a non-empty list, got 8",
    ),
    (
        {"learning_rate": {"type": "uniform", "low": 0.0, "high": 1.0}},
        r"\['learning_rate'\]: type 'uniform' is not one of \['float', 'int', 'categorical'\]",
    ),
    (
        {"warmup_ratio": {"type": "float", "low": 0.0, "high": 0.1, "step": 0.5}},
        r"\['warmup_ratio'\]: step \(0.5\) is larger than the range",
    ),
    (
        {"learning_rate": {"type": "float", "low": "small", "high": 0.1}},
        r"\['learning_rate'\]: low must be a number, got 'small'",
    ),
    ({"learning_rate": {"type": "float", "high": 0.1}}, r"\['learning_rate'\]: low is required"),
    ({"learning_rate": {"type": "float", "low": 1e-5, "high": 0.1, "lgo": True}}, r"unknown field\(s\) \['lgo'\]"),
    (
        {"learning_rte": {"type": "float", "low": 1e-5, "high": 0.1}},
        r"\['learning_rte'\]: not a field of OptunaTrainingArguments",
    ),
    (
        {"per_device_train_batch_size": {"type": "float", "low": 8, "high": 64}},
        r"\['per_device_train_batch_size'\]: type float does not fit.*use type: int",
    ),
    (
        {"per_device_train_batch_size": {"type": "categorical", "choices": [8, "big"]}},
        r"choice 'big' \(str\) does not fit",
    ),
    (
        {"num_train_epochs": {"type": "int", "low": 1.5, "high": 3}},
        r"\['num_train_epochs'\]: low must be a whole number for type int",
    ),
    (
        {"output_dir": {"type": "categorical", "choices": ["a", "b"]}},
        r"\['output_dir'\]: output_dir is fixed for the whole search",
    ),
    ({"learning_rate": 0.001}, r"\['learning_rate'\]: expected a spec like"),
    ({"model.": {"type": "float", "low": 0.0, "high": 0.1}}, r"expected model.<config attribute>"),
    ({}, r"hp_space: the search space is empty"),
]


@pytest.mark.parametrize("spec,message", BAD_SPECS, ids=[str(i) for i in range(len(BAD_SPECS))])
def test_bad_specs_name_the_key(spec, message):
    with pytest.raises(ValueError, match=message):
        SearchSpace.parse(spec, OptunaTrainingArguments)


def test_missing_file_and_bad_json(tmp_path):
    with pytest.raises(ValueError, match=r"hp_space: 'nope.yaml' is neither an existing YAML/JSON file"):
        SearchSpace.parse("nope.yaml", OptunaTrainingArguments)
    with pytest.raises(ValueError, match=r"hp_space: not valid JSON"):
        SearchSpace.parse('{"learning_rate": ', OptunaTrainingArguments)
    broken = tmp_path / "broken.yaml"
    broken.write_text("learning_rate: {type: float, low: [\n")
    with pytest.raises(ValueError, match=r"hp_space: cannot parse"):
        SearchSpace.parse(str(broken), OptunaTrainingArguments)


def test_yaml_object_tags_are_refused(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("learning_rate: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ValueError, match=r"hp_space: cannot parse"):
        SearchSpace.parse(str(evil), OptunaTrainingArguments)


def test_callable_space_values_are_checked():
    check_key("learning_rate", OptunaTrainingArguments, value=1e-3)
    check_key("model.hidden_dropout_prob", OptunaTrainingArguments, value=0.1)
    with pytest.raises(ValueError, match=r"\['not_a_field'\]: not a field"):
        check_key("not_a_field", OptunaTrainingArguments, value=1)
    with pytest.raises(ValueError, match=r"\['per_device_train_batch_size'\]: value 8.5 \(float\) does not fit"):
        check_key("per_device_train_batch_size", OptunaTrainingArguments, value=8.5)
