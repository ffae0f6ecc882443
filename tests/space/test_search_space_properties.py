"""Property-based tests of the search-space parser (hypothesis).

- every valid spec gives a space whose samples (Optuna's RandomSampler through `study.ask()`) lie inside it;
- every invalid spec raises `ValueError` or `TypeError` naming the key, never another exception, and always at
  construction: a space that was built never fails when sampled, printed or rebuilt from its printed form.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from optuna_trainer import OptunaTrainingArguments, SearchSpace

pytestmark = pytest.mark.filterwarnings("ignore:The distribution is specified by:UserWarning")
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SAMPLES = 4


@pytest.fixture(autouse=True, scope="module")
def _quiet_optuna():
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(verbosity)


keys = st.builds(
    lambda prefix, name: prefix + name,
    st.sampled_from(["", "model."]),
    st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True),
)
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def float_specs(draw: Any) -> dict[str, Any]:
    log = draw(st.booleans())
    if log:
        low = draw(st.floats(min_value=1e-8, max_value=1e3))
        high = draw(st.floats(min_value=low * 1.001, max_value=1e6))
        assume(low < high)
        return {"type": "float", "low": low, "high": high, "log": True}
    low = draw(finite)
    high = draw(st.floats(min_value=low, max_value=low + 1e6, allow_nan=False, allow_infinity=False))
    assume(high - low > 1e-6)
    spec: dict[str, Any] = {"type": "float", "low": low, "high": high}
    if draw(st.booleans()):
        spec["step"] = draw(st.floats(min_value=(high - low) / 1000, max_value=high - low))
        assume(spec["step"] > 0)
    return spec


@st.composite
def int_specs(draw: Any) -> dict[str, Any]:
    log = draw(st.booleans())
    low = draw(st.integers(min_value=1 if log else -1000, max_value=1000))
    high = draw(st.integers(min_value=low + 1, max_value=low + 5000))
    spec: dict[str, Any] = {"type": "int", "low": low, "high": high}
    if log:
        spec["log"] = True
    elif draw(st.booleans()):
        spec["step"] = draw(st.integers(min_value=1, max_value=high - low))
    return spec


choice_values = st.one_of(st.none(), st.booleans(), st.integers(-100, 100), finite, st.text(max_size=8))
categorical_specs = st.builds(
    lambda choices: {"type": "categorical", "choices": choices},
    st.lists(choice_values, min_size=1, max_size=6, unique_by=lambda c: (type(c), c)),
)
valid_specs = st.one_of(float_specs(), int_specs(), categorical_specs)
valid_spaces = st.dictionaries(keys, valid_specs, min_size=1, max_size=5)


def _same_choice(value: Any, choices: tuple[Any, ...]) -> bool:
    return any(type(value) is type(c) and (value == c) for c in choices)


def assert_inside(space: SearchSpace, seed: int) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(SAMPLES):
        values = space.suggest(study.ask())
        assert list(values) == list(space.distributions)
        for name, value in values.items():
            dist = space.distributions[name]
            if isinstance(dist, CategoricalDistribution):
                assert _same_choice(value, dist.choices), (name, value, dist.choices)
            elif isinstance(dist, IntDistribution):
                assert isinstance(value, int) and not isinstance(value, bool)
                assert dist.low <= value <= dist.high
                assert (value - dist.low) % dist.step == 0
            else:
                assert isinstance(value, float) and math.isfinite(value)
                assert dist.low <= value <= dist.high, (name, value, dist)
                if dist.log:
                    assert value > 0
                if dist.step is not None:
                    k = (value - dist.low) / dist.step
                    assert abs(k - round(k)) < 1e-6, (value, dist)


def assert_same_space(rebuilt: SearchSpace, space: SearchSpace) -> None:
    # Exactly the same distributions: a printed space (settings, summaries) reads back as the space it came from.
    assert rebuilt.distributions == space.distributions
    assert list(rebuilt.distributions) == list(space.distributions)


class TestValidSpaces:
    @SETTINGS
    @given(valid_spaces, st.integers(0, 2**16))
    def test_samples_lie_inside_the_space(self, mapping: dict[str, Any], seed: int) -> None:
        space = SearchSpace.parse(mapping)
        assert list(space.distributions) == list(mapping)
        for name, spec in mapping.items():
            dist = space.distributions[name]
            if spec["type"] != "categorical":
                # The space is the declared one: low kept, high at most the declared one (lowered onto the step grid;
                # a grid point that rounding puts a few ulps above the declared high is the point the user meant).
                slack = 1e-9 * spec.get("step", 0)
                assert dist.low == spec["low"] and dist.high <= spec["high"] + slack
                assert dist.log == spec.get("log", False)
        assert_inside(space, seed)

    @SETTINGS
    @given(valid_spaces)
    def test_the_printed_space_rebuilds_the_same_space(self, mapping: dict[str, Any]) -> None:
        space = SearchSpace.parse(mapping)
        assert_same_space(SearchSpace.parse(space.to_dict()), space)

    @SETTINGS
    @given(
        st.dictionaries(st.sampled_from(["learning_rate", "weight_decay", "adam_epsilon"]), float_specs(), min_size=1)
    )
    def test_float_fields_accept_float_specs(self, mapping: dict[str, Any]) -> None:
        space = SearchSpace.parse(mapping, OptunaTrainingArguments)
        assert all(isinstance(d, FloatDistribution) for d in space.distributions.values())


# ---- invalid specs ------------------------------------------------------------------------------------------------

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10),
    st.floats(),
    st.text(max_size=6),
    st.sampled_from(["float", "int", "categorical", "1e-5", "uniform"]),
    st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=3), st.none()), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _not_a_number(text: str) -> bool:
    # YAML 1.1 reads 1e-5 as a string and the parser takes such strings as numbers: they are not broken bounds.
    try:
        float(text)
    except ValueError:
        return True
    return False


@st.composite
def broken_specs(draw: Any) -> Any:
    """A valid spec with one thing made wrong, so that it is invalid by construction."""
    spec = dict(draw(st.one_of(float_specs(), int_specs())))
    how = draw(
        st.sampled_from(
            ["swap", "equal", "log_low", "bound_type", "bound_nonfinite", "type", "extra", "step", "no_bound"]
        )
    )
    if how == "swap":
        spec["low"], spec["high"] = spec["high"], spec["low"]
        spec.pop("step", None)
    elif how == "equal":
        spec["high"] = spec["low"]
        spec.pop("step", None)
    elif how == "log_low":
        spec.pop("step", None)
        spec.update(log=True, low=draw(st.sampled_from([0, -1, -0.5])), high=max(spec["high"], 10))
    elif how == "bound_type":
        spec[draw(st.sampled_from(["low", "high"]))] = draw(
            st.one_of(
                st.text(max_size=5).filter(_not_a_number),
                st.none(),
                st.booleans(),
                st.lists(st.integers(), max_size=2),
            )
        )
    elif how == "bound_nonfinite":
        spec[draw(st.sampled_from(["low", "high"]))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    elif how == "type":
        spec["type"] = draw(
            st.one_of(st.none(), st.text(max_size=8).filter(lambda t: t not in ("float", "int")), st.integers())
        )
    elif how == "extra":
        spec[draw(st.sampled_from(["choices", "lg", "steps", "default"]))] = 1
    elif how == "step":
        spec.pop("log", None)
        spec["step"] = draw(
            st.one_of(st.sampled_from([0, -1, "one", None, True]), st.just(2 * (spec["high"] - spec["low"]) + 1))
        )
        if spec["step"] is None:
            spec["step"] = math.nan
    else:
        del spec[draw(st.sampled_from(["low", "high"]))]
    return spec


broken_categorical = st.one_of(
    st.builds(
        lambda c: {"type": "categorical", "choices": c},
        st.one_of(st.just([]), st.text(max_size=4), st.none(), st.integers()),
    ),
    st.builds(lambda c: {"type": "categorical", "choices": [c, c]}, st.one_of(st.integers(), st.text(max_size=3))),
    st.builds(
        lambda c: {"type": "categorical", "choices": [1, c]},
        st.one_of(st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers())),
    ),
    st.builds(lambda x: {"type": "categorical", "choices": [1, 2], "low": x}, st.integers()),
)
not_a_mapping = st.one_of(st.none(), st.integers(), finite, st.text(max_size=5), st.lists(st.integers(), max_size=3))
invalid_specs = st.one_of(broken_specs(), broken_categorical, not_a_mapping)


def assert_rejected_naming(mapping: dict[str, Any], key: str, args_class: type | None = None) -> None:
    try:
        SearchSpace.parse(mapping, args_class)
    except (ValueError, TypeError) as err:
        assert f"hp_space[{key!r}]" in str(err), str(err)
    else:
        raise AssertionError(f"{mapping!r} was accepted")


class TestInvalidSpaces:
    @SETTINGS
    @given(keys, invalid_specs, valid_spaces)
    def test_invalid_spec_is_rejected_with_its_key(self, key: str, spec: Any, others: dict[str, Any]) -> None:
        others.pop(key, None)
        # The bad key anywhere among valid ones: the error names the bad one.
        mapping = {**others, key: spec}
        assert_rejected_naming(mapping, key)

    @SETTINGS
    @given(
        keys,
        st.dictionaries(st.sampled_from(["type", "low", "high", "log", "step", "choices", "x"]), junk),
        st.integers(0, 2**16),
    )
    def test_any_spec_is_either_a_sound_space_or_a_clear_error(self, key: str, spec: dict, seed: int) -> None:
        try:
            space = SearchSpace.parse({key: spec})
        except (ValueError, TypeError) as err:
            assert f"hp_space[{key!r}]" in str(err), str(err)
            return
        # Accepted: nothing may fail later, when it is sampled, printed, rebuilt or turned into a grid.
        assert_inside(space, seed)
        assert_same_space(SearchSpace.parse(space.to_dict()), space)
        try:
            space.grid()
        except ValueError as err:
            assert f"hp_space[{key!r}]" in str(err)

    @SETTINGS
    @given(
        st.from_regex(r"[a-z][a-z_]{2,12}", fullmatch=True).filter(
            lambda k: k not in {f for f in OptunaTrainingArguments.__dataclass_fields__}
        ),
        float_specs(),
    )
    def test_unknown_field_is_rejected_with_its_key(self, key: str, spec: dict[str, Any]) -> None:
        assert_rejected_naming({key: spec}, key, OptunaTrainingArguments)

    @SETTINGS
    @given(
        st.sampled_from(["per_device_train_batch_size", "gradient_accumulation_steps", "seed", "max_steps"]),
        float_specs(),
    )
    def test_float_spec_for_an_int_field_is_rejected(self, key: str, spec: dict[str, Any]) -> None:
        assert_rejected_naming({key: spec}, key, OptunaTrainingArguments)
