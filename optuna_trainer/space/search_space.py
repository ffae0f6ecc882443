"""Declarative search spaces: parse, validate and sample them with Optuna's own distributions.

A search space maps a parameter name to a spec::

    learning_rate: {type: float, low: 5.0e-6, high: 5.0e-5, log: true}
    per_device_train_batch_size: {type: categorical, choices: [64, 128, 256]}
    model.hidden_dropout_prob: {type: float, low: 0.0, high: 0.3}

A key is either a `TrainingArguments` field or `model.<attribute>` of the model's config. Every spec is checked
when the space is built, so a typo fails before any model is loaded, with the key in the message.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import logging
import math
import os
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Union

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from optuna_trainer._files import parse_json_text, read_data_file

logger = logging.getLogger(__name__)

MODEL_PREFIX = "model."
PEFT_PREFIX = "peft."  # training/adapters.py: the key's field goes to the trial's PEFT adapter config
SPEC_TYPES = ("float", "int", "categorical")
_SPEC_KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}
# Keys a search must not move: where results go and the search's own settings.
_FORBIDDEN_KEYS = {
    "output_dir",
    "logging_dir",
    "hp_space",
    "sampler",
    "pruner",
    "n_trials",
    "timeout",
    "direction",
    "storage",
    "study_name",
    "objective_metric",
    "save_best_model",
    "search_report",
    "continue_on_oom",
    "heartbeat_interval",
}

HpSpaceCallable = Callable[[optuna.Trial], dict[str, Any]]

# Search keys for fields transformers renamed: the key stays as the user declared it (in trial params and reports)
# and its value goes to the new field. transformers 5 folded `warmup_ratio` into `warmup_steps` (a float below 1 is a
# ratio of the total steps).
FIELD_ALIASES: dict[str, str] = {"warmup_ratio": "warmup_steps"}


def load_mapping(value: Mapping[str, Any] | str | os.PathLike, what: str) -> dict[str, Any]:
    """Read a mapping given as a dict, a path to a YAML/JSON file, or a JSON/YAML string.

    Args:
        value: the mapping, a file path, or an inline JSON string.
        what: the name of the setting, used in error messages.
    """
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise TypeError(
            f"{what}: expected a dict, a path to a YAML/JSON file or a JSON string, got {type(value).__name__}"
        )
    text = value.strip()
    if text.startswith("{"):
        loaded = parse_json_text(text, what, "fix the JSON there, or give the path of a YAML/JSON file")
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ValueError(
                f"{what}: {text!r} is neither an existing YAML/JSON file nor an inline JSON object starting with '{{'"
            )
        loaded = read_data_file(
            path,
            f"{what}: cannot parse {path}",
            plain_data="a search space is plain data: write each spec as a mapping of numbers, strings and lists",
        )
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{what}: expected a mapping of name -> spec, got {type(loaded).__name__}")
    return dict(loaded)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _yaml_number(value: Any) -> Any:
    # YAML 1.1 reads `1e-5` (no dot) as a string; a bound written that way is meant as a number.
    if isinstance(value, str):
        try:
            return int(value) if value.strip().lstrip("+-").isdigit() else float(value)
        except ValueError:
            return value
    return value


def _spec_to_distribution(key: str, spec: Any) -> BaseDistribution:
    where = f"hp_space[{key!r}]"
    if not isinstance(spec, Mapping):
        raise ValueError(
            f"{where}: expected a spec like {{type: float, low: 1e-5, high: 1e-3}}, got {type(spec).__name__} {spec!r}"
        )
    kind = spec.get("type")
    if kind not in SPEC_TYPES:
        raise ValueError(f"{where}: type {kind!r} is not one of {list(SPEC_TYPES)}")
    unknown = set(spec) - _SPEC_KEYS[kind]
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {sorted(unknown)} for type {kind}; allowed: {sorted(_SPEC_KEYS[kind])}"
        )

    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, (list, tuple)) or len(choices) == 0:
            raise ValueError(f"{where}: choices must be a non-empty list, got {choices!r}")
        for choice in choices:
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                raise ValueError(
                    f"{where}: choice {choice!r} is a {type(choice).__name__}; choices must be numbers, strings, "
                    "booleans or null"
                )
        if len({(type(c), c) for c in choices}) != len(choices):
            raise ValueError(f"{where}: choices {list(choices)!r} contain duplicates; list each choice once")
        return CategoricalDistribution(list(choices))

    spec = {k: _yaml_number(v) if k in ("low", "high", "step") else v for k, v in spec.items()}
    for bound in ("low", "high"):
        if bound not in spec:
            raise ValueError(f"{where}: {bound} is required for type {kind}")
        if not _is_number(spec[bound]):
            raise ValueError(f"{where}: {bound} must be a number, got {spec[bound]!r}")
        if not math.isfinite(spec[bound]):
            raise ValueError(f"{where}: {bound} must be finite, got {spec[bound]!r}")
    low, high = spec["low"], spec["high"]
    log = spec.get("log", False)
    step = spec.get("step")
    if not isinstance(log, bool):
        raise ValueError(f"{where}: log must be true or false, got {log!r}")
    if not low < high:
        raise ValueError(
            f"{where}: low ({low}) must be below high ({high}); for a fixed value set it in the training arguments"
        )
    if step is not None:
        if not _is_number(step) or not math.isfinite(step) or step <= 0:
            raise ValueError(f"{where}: step must be a positive number, got {step!r}")
        # A relative tolerance: a printed space whose high Optuna put on low + step must read back as valid.
        if step > (high - low) * (1 + 1e-9):
            raise ValueError(
                f"{where}: step ({step}) is larger than the range high - low ({high - low}); use a step of at most "
                f"{high - low} or widen the range"
            )

    if kind == "int":
        for name, value in (("low", low), ("high", high), ("step", step)):
            if value is not None and not (isinstance(value, int) or float(value).is_integer()):
                raise ValueError(f"{where}: {name} must be a whole number for type int, got {value!r}; use type float")
        low, high = int(low), int(high)
        step = 1 if step is None else int(step)
        if log and low < 1:
            raise ValueError(
                f"{where}: log=true needs low >= 1 for type int, got low={low}; use log=false or low >= 1"
            )
        if log and step != 1:
            raise ValueError(f"{where}: log=true cannot be combined with step ({step}); drop one of them")
        return IntDistribution(low, high, log=log, step=step)

    if log and low <= 0:
        raise ValueError(f"{where}: log=true needs low > 0, got low={low}; use log=false or a positive low")
    if log and step is not None:
        raise ValueError(f"{where}: log=true cannot be combined with step ({step}); drop one of them")
    if step is None:
        return FloatDistribution(float(low), float(high), log=log)
    return _stepped_float(where, float(low), float(high), float(step))


def _stepped_float(where: str, low: float, high: float, step: float) -> FloatDistribution:
    """A float range on the grid low + k * step, with k the count the user meant (0.0..0.2 step 0.05: k = 4).

    Optuna lowers `high` onto the grid with decimal arithmetic on the floats' printed forms, which can drop the last
    point when (high - low) / step is a whole number only up to rounding (and then again each time a printed space is
    read back). Giving it the middle of the last step makes it land on exactly that point, so a printed space reads
    back as the same space.
    """
    ratio = (high - low) / step
    k = math.floor(ratio + 1e-9)
    if abs(ratio - round(ratio)) > 1e-9:
        logger.warning(
            f"{where}: high ({high}) is not low + a whole number of steps ({step}); the largest value sampled is "
            f"{low + k * step}"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The distribution is specified by", category=UserWarning)
        return FloatDistribution(low, low + (k + 0.5) * step, step=step)


def _accepted_types(annotation: Any) -> tuple[set[type], bool]:
    """The plain types a field annotation accepts, and whether it accepts anything at all."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return set(), True
    if origin is Union or origin is types.UnionType:
        accepted: set[type] = set()
        for arg in typing.get_args(annotation):
            sub, anything = _accepted_types(arg)
            if anything:
                return set(), True
            accepted |= sub
        return accepted, False
    if origin is Literal:
        return {type(arg) for arg in typing.get_args(annotation)}, False
    if origin is not None:
        return {origin}, False
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return {str}, False
        return {annotation}, False
    return set(), True


def _list_items(annotation: Any) -> set[type]:
    """The plain types of one item of the list types in a field annotation (`list[str]`: {str}).

    A searched value is one choice, and a choice cannot be a list (Optuna's choices are None, bool, int, float and
    str), so a list field is searched with single items: `DPOConfig.loss_type` (`list[str]`) takes "sigmoid" and
    makes it ["sigmoid"]. Whether the arguments class does turn the item into a list is checked with the trainer
    (search/checks.py: `check_argument_values`).
    """
    origin = typing.get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        return set().union(*(_list_items(arg) for arg in typing.get_args(annotation)))
    if origin is list:
        args = typing.get_args(annotation)
        if not args:
            return set()
        items, anything = _accepted_types(args[0])
        return set() if anything else items
    return set()


def as_list_item(annotation: Any, value: Any) -> bool:
    """Whether `value` fits `annotation` only as one item of a list (see `_list_items`)."""
    accepted, anything = _accepted_types(annotation)
    return not anything and not _value_fits(value, accepted) and _value_fits(value, _list_items(annotation))


def _fits(value: Any, annotation: Any) -> bool:
    accepted, anything = _accepted_types(annotation)
    return anything or _value_fits(value, accepted) or _value_fits(value, _list_items(annotation))


def _value_fits(value: Any, accepted: set[type]) -> bool:
    if value is None:
        return type(None) in accepted
    if isinstance(value, bool):
        return bool in accepted
    if isinstance(value, int):
        return int in accepted or float in accepted
    if isinstance(value, float):
        return float in accepted
    return any(isinstance(value, t) for t in accepted)


def _check_field_type(key: str, dist: BaseDistribution, annotation: Any) -> None:
    accepted, anything = _accepted_types(annotation)
    if anything:
        return
    if isinstance(dist, CategoricalDistribution):
        for choice in dist.choices:
            if not _fits(choice, annotation):
                raise ValueError(
                    f"hp_space[{key!r}]: choice {choice!r} ({type(choice).__name__}) does not fit the field's type "
                    f"{type_name(annotation)}; use choices of that type"
                )
        return
    sample = 1 if isinstance(dist, IntDistribution) else 0.5
    if not _fits(sample, annotation):
        kind = "int" if isinstance(dist, IntDistribution) else "float"
        hint = "type: int" if int in accepted else "type: categorical"
        raise ValueError(
            f"hp_space[{key!r}]: type {kind} does not fit the field's type {type_name(annotation)}; use {hint}"
        )


def type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is not None:  # `list[str]`, not the bare `list` its __name__ says
        return str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def check_key(key: str, args_class: type | None, dist: BaseDistribution | None = None, value: Any = None) -> None:
    """Check one search key: a field of `args_class` whose type fits, or `model.<attribute>`.

    Args:
        key: the parameter name.
        args_class: the arguments class; None skips the field checks.
        dist: the key's distribution (declarative spaces), checked against the field's type.
        value: a sampled value (callable spaces), checked against the field's type.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"hp_space: every key must be a non-empty string, got {key!r}")
    if key.startswith(MODEL_PREFIX):
        if not key[len(MODEL_PREFIX) :].isidentifier():
            raise ValueError(f"hp_space[{key!r}]: expected model.<config attribute>, e.g. model.hidden_dropout_prob")
        return
    if key.startswith(PEFT_PREFIX):
        if not key[len(PEFT_PREFIX) :].isidentifier():
            raise ValueError(
                f"hp_space[{key!r}]: expected peft.<adapter config field>, e.g. peft.r or peft.lora_alpha"
            )
        return  # the field is checked against the adapter's config class with the model (training/adapters.py)
    if args_class is None:
        return
    if key in _FORBIDDEN_KEYS:
        raise ValueError(
            f"hp_space[{key!r}]: {key} is fixed for the whole search and cannot be searched; set it in the training "
            "arguments and search training fields or model.<attribute> keys instead"
        )
    init_fields = {f.name for f in dataclasses.fields(args_class) if f.init}
    if key in FIELD_ALIASES and key not in init_fields:
        high = dist.high if isinstance(dist, (FloatDistribution, IntDistribution)) else None
        ratios = [value] if dist is None else list(getattr(dist, "choices", [])) + ([high] if high is not None else [])
        if any(not _is_number(r) or not 0 <= r < 1 for r in ratios if r is not None):
            raise ValueError(f"hp_space[{key!r}]: a ratio must lie in [0, 1), got {ratios}")
        return
    if key not in init_fields:
        close = difflib.get_close_matches(key, sorted(init_fields), n=1)
        raise ValueError(
            f"hp_space[{key!r}]: not a field of {args_class.__name__}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + "; a key must be a training argument "
            "(e.g. learning_rate, per_device_train_batch_size, weight_decay) or model.<config attribute> "
            "(e.g. model.hidden_dropout_prob)"
        )
    annotation = typing.get_type_hints(args_class).get(key, Any)
    if dist is not None:
        _check_field_type(key, dist, annotation)
    else:
        if not _fits(value, annotation):
            raise ValueError(
                f"hp_space[{key!r}]: value {value!r} ({type(value).__name__}) does not fit the field's type "
                f"{type_name(annotation)}"
            )


def check_aliases(keys: Iterable[str]) -> None:
    """Raise if two keys set one field (`warmup_ratio` and `warmup_steps`): one trial's value would silently win."""
    present = set(keys)
    for alias, target in FIELD_ALIASES.items():
        if alias in present and target in present:
            raise ValueError(
                f"hp_space: {alias!r} and {target!r} both set {target} (transformers 5 folded {alias} into it: a "
                f"float below 1 is a ratio); search one of them"
            )


def check_model_keys(keys: Iterable[str], config: Any) -> None:
    """Raise if a `model.<attribute>` key names an attribute that `config` (the model's config) does not have."""
    for key in keys:
        if not key.startswith(MODEL_PREFIX):
            continue
        attr = key[len(MODEL_PREFIX) :]
        if config is None:
            raise ValueError(f"hp_space[{key!r}]: the model has no config to apply {attr} to")
        if attr.startswith("_"):
            raise ValueError(
                f"hp_space[{key!r}]: {attr} is private to {type(config).__name__}, not a hyperparameter; search a "
                "public config attribute (e.g. model.hidden_dropout_prob)"
            )
        if hasattr(config, attr) and callable(getattr(config, attr)):
            raise ValueError(
                f"hp_space[{key!r}]: {attr} is a method of {type(config).__name__}, not a value; search a config "
                "value (e.g. model.hidden_dropout_prob)"
            )
        if not hasattr(config, attr):
            known = sorted(k for k in config.to_dict() if not k.startswith("_")) if hasattr(config, "to_dict") else []
            close = difflib.get_close_matches(attr, known, n=1)
            raise ValueError(
                f"hp_space[{key!r}]: {type(config).__name__} has no attribute {attr!r}"
                + (f" (did you mean 'model.{close[0]}'?)" if close else "")
                + f"; known attributes include {known[:40]}"
            )


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A validated declarative search space.

    Attributes:
        distributions: parameter name -> Optuna distribution, in declaration order.
    """

    distributions: dict[str, BaseDistribution]

    @classmethod
    def parse(
        cls,
        value: Mapping[str, Any] | str | os.PathLike,
        args_class: type | None = None,
    ) -> SearchSpace:
        """Build a space from a dict, a YAML/JSON file path or a JSON string, checking every spec.

        Args:
            value: the declarative space.
            args_class: the `TrainingArguments` class whose fields are valid keys (besides `model.<attribute>`);
                with None, keys are not checked against fields.
        """
        mapping = load_mapping(value, "hp_space")
        if not mapping:
            raise ValueError("hp_space: the search space is empty; declare at least one parameter")
        distributions: dict[str, BaseDistribution] = {}
        for key, spec in mapping.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"hp_space: every key must be a non-empty string, got {key!r}")
            dist = _spec_to_distribution(key, spec)
            check_key(key, args_class, dist)
            distributions[key] = dist
        check_aliases(distributions)
        return cls(distributions)

    @property
    def model_keys(self) -> dict[str, str]:
        """Search keys that go to the model's config: full key -> config attribute."""
        return {k: k[len(MODEL_PREFIX) :] for k in self.distributions if k.startswith(MODEL_PREFIX)}

    def candidates(self) -> dict[str, list[Any]]:
        """The values a check tries for each key: a categorical's choices, a range's two ends."""
        out: dict[str, list[Any]] = {}
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                out[name] = list(dist.choices)
            else:
                ranged = dist if isinstance(dist, IntDistribution) else _float(name, dist)
                out[name] = [ranged.low, ranged.high]
        return out

    def check_model_config(self, config: Any) -> None:
        """Raise if a `model.<attribute>` key names an attribute the model's config does not have."""
        check_model_keys(self.distributions, config)

    def suggest(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        """Sample every parameter through the trial's public `suggest_*` API."""
        values: dict[str, Any] = {}
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                values[name] = trial.suggest_categorical(name, dist.choices)
            elif isinstance(dist, IntDistribution):
                values[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
            else:
                dist = _float(name, dist)
                values[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
        return values

    def grid(self) -> dict[str, list[Any]]:
        """The finite grid this space spans, for `GridSampler`; continuous ranges without a step are an error."""
        grid: dict[str, list[Any]] = {}
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                grid[name] = list(dist.choices)
            elif isinstance(dist, IntDistribution):
                grid[name] = list(range(dist.low, dist.high + 1, dist.step))
            elif (dist := _float(name, dist)).step is not None:
                count = int(round((dist.high - dist.low) / dist.step)) + 1
                grid[name] = [
                    round(dist.low + i * dist.step, 12)
                    for i in range(count)
                    if dist.low + i * dist.step <= dist.high + 1e-12
                ]
            else:
                raise ValueError(
                    f"sampler grid: hp_space[{name!r}] is a continuous float range ({dist.low}..{dist.high}) and has "
                    "no finite grid; give it a step or make it categorical"
                )
        return grid

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The space back as plain specs (for summaries and logs)."""
        out: dict[str, dict[str, Any]] = {}
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                out[name] = {"type": "categorical", "choices": list(dist.choices)}
            else:
                kind = "int" if isinstance(dist, IntDistribution) else "float"
                dist = dist if isinstance(dist, IntDistribution) else _float(name, dist)
                spec: dict[str, Any] = {"type": kind, "low": dist.low, "high": dist.high}
                if dist.log:
                    spec["log"] = True
                if dist.step is not None and not (kind == "int" and dist.step == 1):
                    spec["step"] = dist.step
                out[name] = spec
        return out


# transformers' `default_hp_space_optuna`, written declaratively so that it is printed and checked like any other.
DEFAULT_HP_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 1e-6, "high": 1e-4, "log": True},
    "num_train_epochs": {"type": "int", "low": 1, "high": 5},
    "seed": {"type": "int", "low": 1, "high": 40},
    "per_device_train_batch_size": {"type": "categorical", "choices": [4, 8, 16, 32, 64]},
}


def describe_hp_space(hp_space: SearchSpace | Callable | None) -> Any:
    """A printable description of a space: the specs, or the callable's qualified name."""
    if isinstance(hp_space, SearchSpace):
        return hp_space.to_dict()
    if callable(hp_space):
        return f"<callable {getattr(hp_space, '__qualname__', repr(hp_space))}>"
    return None


def split_params(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split one trial's values into (training-argument values, model-config values)."""
    args_values: dict[str, Any] = {}
    model_values: dict[str, Any] = {}
    for key, value in values.items():
        if key.startswith(MODEL_PREFIX):
            model_values[key[len(MODEL_PREFIX) :]] = value
        else:
            args_values[FIELD_ALIASES.get(key, key)] = value
    return args_values, model_values


def _float(name: str, dist: BaseDistribution) -> FloatDistribution:
    """`dist` as the float range it must be here: a space holds only the three kinds that `parse` builds."""
    if not isinstance(dist, FloatDistribution):
        raise TypeError(f"hp_space[{name!r}]: unsupported distribution {type(dist).__name__}")
    return dist
