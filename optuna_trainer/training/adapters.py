"""`peft.<field>` search keys: a fresh PEFT adapter per trial over a base model that is loaded once.

transformers' search cannot search an adapter's settings (its issue 29391), and the workaround users write is a
`model_init` that loads the whole base model again for every trial. Here the base model is the trainer's own (built
once, by `model=` or by transformers from `model_init` at construction); each trial wraps it with a fresh adapter
(`peft.get_peft_model` with the trial's values, after transformers has set the trial's seed, so the adapter starts
from that seed), and when the trial ends the adapter is taken off again and the base is put back exactly as it was.

"Taken off" is not PEFT's `unload()` alone: `unload()` puts a `modules_to_save` module (a classification head) back
as its *trained copy*, so the next trial would start from the previous trial's head. What a trial can change in the
base, and how each is undone without copying the base's weights (the base is shared because it is large):
- its module tree (the trained head copy, any wrapper left in place): every module object is put back where it was
  (`_Tree`), so the original head, which the trial never trained, is the head again;
- base parameters PEFT makes trainable in place (`bias="all"`, `"lora_only"`): cloned when the adapter is made and
  copied back, only those;
- buffers (running statistics update in place in training mode): cloned once before the first trial (they are
  small) and copied back after each;
- `requires_grad` and train/eval flags: recorded and set back.
Initializations that rewrite the base weights when the adapter is made (`init_lora_weights="pissa"`, `"olora"`,
`"corda"`, `"loftq"`, ...) cannot be undone without a full copy, and are refused before training.

The adapter's configuration is the user's (`peft_config=` of TRL's trainers, or the adapter of a `PeftModel` given as
`model=`) with the trial's values, else PEFT's `LoraConfig` defaults, with the task type taken from the model's class
so that a classification head is trained as `modules_to_save`. A user's `PeftModel` is taken apart once at the start
(its base, with the original head, is what every trial starts from) and put back together at the end, the same object
with the same tensors.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import numbers
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

PEFT_PREFIX = "peft."

# The model class name's ending -> PEFT's task type (what decides which head is trained along with the adapter).
_TASK_TYPES = {
    "ForSequenceClassification": "SEQ_CLS",
    "ForTokenClassification": "TOKEN_CLS",
    "ForQuestionAnswering": "QUESTION_ANS",
    "ForCausalLM": "CAUSAL_LM",
    "ForConditionalGeneration": "SEQ_2_SEQ_LM",
}


# What users call LoRA's settings elsewhere (papers, other libraries) -> LoraConfig's field.
_USUAL_NAMES = {
    "rank": "r",
    "alpha": "lora_alpha",
    "dropout": "lora_dropout",
    "targets": "target_modules",
    "modules": "target_modules",
    "rslora": "use_rslora",
    "dora": "use_dora",
}


def import_peft() -> Any:
    """The `peft` package, or an `ImportError` saying which extra installs it."""
    try:
        import peft
    except ImportError:
        raise ImportError(
            'hp_space: peft.<field> keys search a PEFT adapter and need the peft package: pip install "optuna-trainer[peft]"'
        ) from None
    return peft


def split_peft(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split one trial's values into (the rest, adapter field -> value)."""
    rest = {k: v for k, v in values.items() if not k.startswith(PEFT_PREFIX)}
    adapter = {k[len(PEFT_PREFIX) :]: v for k, v in values.items() if k.startswith(PEFT_PREFIX)}
    return rest, adapter


# Fields whose string value PEFT reads as a regex full-matched against the whole module path ("query" matches no
# "bert.encoder.layer.0.attention.self.query"): a searched string is a module name, or names joined by commas.
_MODULE_NAME_FIELDS = ("target_modules", "exclude_modules")
_ALL_LINEAR = "all-linear"

# Ranges the config classes do not check themselves (LoraConfig takes r=0 or lora_dropout="0.1" and fails in the
# first forward pass): field -> (accepts, what is right). lora_alpha is annotated int, but a float scales as well.
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "r": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "lora_alpha": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "lora_dropout": (lambda v: _is_number(v) and 0 <= v < 1, "a float in [0, 1)"),
}

# init_lora_weights values that leave the base weights alone. The others ("pissa", "pissa_niter_<n>", "olora",
# "corda", "loftq", "lora_ga") write the base layers' weights when the adapter is made, which every later trial (and
# the model handed back) would inherit; undoing that would take a copy of every targeted weight.
_BASE_PRESERVING_INITS = (True, False, "gaussian", "orthogonal", "mica", "eva")


def check_adapter_values(model: nn.Module | None, candidates: dict[str, list[Any]], has_model_keys: bool) -> None:
    """Raise, naming the key, for `peft.<field>` values that would fail in a trial: no peft package, a field that
    LoraConfig (or the user's adapter config) does not have, a value of the wrong type or out of range, one the config
    class refuses, target modules the model does not have, an initialization that rewrites the shared base, or
    `model.` keys alongside (the base model is shared by the trials and cannot be rebuilt with other config values)."""
    if not candidates:
        return
    peft = import_peft()
    if has_model_keys:
        raise ValueError(
            "hp_space: model.<attribute> and peft.<field> keys together: the base model is loaded once and shared by "
            "every trial's adapter, so its config cannot change per trial; search one kind of key"
        )
    config = user_adapter_config(model) if model is not None else None
    config_class = type(config) if config is not None else peft.LoraConfig
    fields = sorted(f.name for f in dataclasses.fields(config_class) if f.init)
    hints = _type_hints(config_class)
    for field, values in candidates.items():
        key = f"{PEFT_PREFIX}{field}"
        if field not in fields:
            close = [_USUAL_NAMES[field]] if _USUAL_NAMES.get(field) in fields else []
            close = close or difflib.get_close_matches(field, fields, n=1)
            raise ValueError(
                f"hp_space[{key!r}]: {config_class.__name__} has no field {field!r}"
                + (f" (did you mean 'peft.{close[0]}'?)" if close else "")
                + f"; its fields: {fields}"
            )
        for value in values:
            _check_value(key, field, value, hints.get(field))
            if field in _MODULE_NAME_FIELDS and model is not None:
                _check_target_modules(key, model, value)
            try:
                adapter_config(peft, config, model, {field: value})
            except Exception as err:  # noqa: BLE001 - whatever the config class refuses, named by its key
                message = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise ValueError(f"hp_space[{key!r}]: {config_class.__name__} refuses {value!r}: {message}") from None
    if config is not None and "init_lora_weights" not in candidates:
        init = getattr(config, "init_lora_weights", True)
        if not _preserves_base(init):
            raise ValueError(
                f"model: the PeftModel's adapter config has init_lora_weights={init!r}, which rewrites the base "
                "model's weights when an adapter is made, and every trial makes one over the same base; give a "
                f"PeftModel whose config has one of {list(_BASE_PRESERVING_INITS)} (its weights are kept)"
            )


def _check_value(key: str, field: str, value: Any, annotation: Any) -> None:
    """The value against the field's annotation (and range, for the fields that have one)."""
    if field in _RANGES:
        accepts, right = _RANGES[field]
        if not accepts(value):
            kind_ok = _is_number(value) and (_is_int(value) or not right.startswith("an int"))
            problem = "is out of range" if kind_ok else f"is a {type(value).__name__}"
            raise ValueError(f"hp_space[{key!r}]: {value!r} {problem}; {field} must be {right}")
        return
    if annotation is not None and not _fits(value, annotation, literals=True):
        problem = "is not allowed" if _fits(value, annotation, literals=False) else f"is a {type(value).__name__}"
        raise ValueError(f"hp_space[{key!r}]: {value!r} {problem}; {field} must be {_describe(annotation)}")
    if field == "init_lora_weights" and not _preserves_base(value):
        raise ValueError(
            f"hp_space[{key!r}]: {value!r} rewrites the base model's weights when the adapter is made, and the trials "
            f"share one base (each would start from the previous one's); search {list(_BASE_PRESERVING_INITS)}"
        )


def _preserves_base(init: Any) -> bool:
    return any(init is v if isinstance(v, bool) else init == v for v in _BASE_PRESERVING_INITS)


def _type_hints(config_class: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(config_class)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve is not checked; PEFT still is
        return {}


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _fits(value: Any, annotation: Any, literals: bool) -> bool:
    """Whether `value` has the annotated type; `literals=False` takes a Literal as its values' types."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return True
    if annotation is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a, literals) for a in args)
    if origin is typing.Literal:
        if not literals:
            return any(type(value) is type(a) for a in args)
        # a documented pattern such as "pissa_niter_[number of iters]" takes its prefix
        return any(
            value == a or (isinstance(a, str) and "[" in a and str(value).startswith(a[: a.index("[")]))
            for a in args
            if type(value) is type(a)
        )
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return _is_int(value)
    if annotation is float:
        return _is_number(value)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, set):
        if not isinstance(value, (list, tuple, set)):
            return False
        item = args[0] if origin is list and args else Any
        return all(_fits(v, item, literals) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # an annotation this check does not know: left to the config class


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return f"one of {list(typing.get_args(annotation))}"
    if annotation is type(None):
        return "None"
    names = {bool: "a bool", int: "an int", float: "a number", str: "a string"}
    if annotation in names:
        return names[annotation]
    return f"a {getattr(origin or annotation, '__name__', str(annotation))}"


def module_name_list(value: Any) -> Any:
    """A searched `target_modules`/`exclude_modules` value as PEFT should see it: a string is a module name or names
    joined by commas ("query,value"), given to PEFT as a list (which it matches against the last part of each module
    name), since PEFT would read the string as a regex over the whole path; "all-linear", None and lists pass."""
    if isinstance(value, str) and value != _ALL_LINEAR:
        return [name.strip() for name in value.split(",") if name.strip()]
    return value


def _check_target_modules(key: str, model: nn.Module, value: Any) -> None:
    if value == _ALL_LINEAR or value is None:
        return
    wanted = module_name_list(value)
    names = module_names(model)
    missing = [m for m in wanted if m not in names] if isinstance(wanted, (list, tuple, set)) else [value]
    if missing or not wanted:
        raise ValueError(
            f"hp_space[{key!r}]: the model has no module named {missing or [value]}; its module names: "
            f"{sorted(names)}; give module names, one ('query') or several joined by commas ('query,value'), "
            "or 'all-linear'"
        )


def module_names(model: nn.Module) -> set[str]:
    """The last parts of the model's module names (what PEFT's `target_modules` match), adapters left out."""
    names = set()
    for name, _ in base_of(model).named_modules():
        if name and "lora_" not in name:
            names.add(name.rsplit(".", 1)[-1])
    return names


def base_of(model: nn.Module) -> nn.Module:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def user_adapter_config(model: nn.Module) -> Any:
    """The adapter config of a `PeftModel` (its active adapter's), or None for a plain model."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or not configs:
        return None
    active = getattr(model, "active_adapter", None)
    return configs.get(active) if isinstance(active, str) and active in configs else next(iter(configs.values()))


def infer_task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    return next((task for ending, task in _TASK_TYPES.items() if name.endswith(ending)), None)


def adapter_config(peft: Any, user_config: Any, model: nn.Module | None, values: dict[str, Any]) -> Any:
    """A trial's adapter config: the user's (or LoraConfig's defaults, with the task type read from the model's
    class) with the trial's `values`."""
    values = {k: module_name_list(v) if k in _MODULE_NAME_FIELDS else v for k, v in values.items()}
    if user_config is not None:
        return dataclasses.replace(user_config, **values)
    if model is not None:
        values.setdefault("task_type", infer_task_type(model))
    return peft.LoraConfig(**values)


class _Tree:
    """Where every module of a model sits, and its flags: references, not copies, so that taking it is cheap and
    putting it back restores the very objects (and so every tensor they hold) that were there."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        # Pre-order (parents first), every name a module is reachable by (a tied module under each of its names).
        self.modules = list(model.named_modules(remove_duplicate=False))
        self.requires_grad = {name: p.requires_grad for name, p in model.named_parameters(remove_duplicate=False)}
        self.training = [module.training for _, module in self.modules]

    def restore(self) -> None:
        for name, module in self.modules[1:]:  # [0] is the model itself
            if self.model.get_submodule(name) is not module:
                self.model.set_submodule(name, module)
        now = [name for name, _ in self.model.named_modules(remove_duplicate=False)]
        if now != [name for name, _ in self.modules]:
            extra = sorted(set(now) - {name for name, _ in self.modules})
            raise RuntimeError(
                f"model: the adapter left modules {extra[:5]} that were not there before the trial, so the base "
                "cannot be handed back as it was; please report this with your peft version"
            )
        for name, param in self.model.named_parameters(remove_duplicate=False):
            param.requires_grad = self.requires_grad.get(name, param.requires_grad)
        for (_, module), training in zip(self.modules, self.training, strict=True):
            module.training = training


class Adapters:
    """Hands out one fresh adapter per trial over a base model that stays the same object, and takes it off again,
    leaving the base bit-identical (see the module docstring for what that takes)."""

    def __init__(self, model: nn.Module) -> None:
        peft = import_peft()
        self._peft = peft
        self.user_config = user_adapter_config(model)
        self.user_model: nn.Module | None = None
        self._user_tree: _Tree | None = None
        self._user_base_config: Any = None
        if self.user_config is not None:
            self.user_model = model
            self._user_tree = _Tree(model)
            model = self._take_apart(model)
        self.base = model
        self._tree = _Tree(self.base)
        # Buffers are small next to the weights and training may update them in place (running statistics).
        self._buffers = {name: b.detach().clone() for name, b in self.base.named_buffers(remove_duplicate=False)}
        self._trained_in_place: list[tuple[nn.Parameter, torch.Tensor]] = []
        self.current: Any = None

    def _take_apart(self, model: nn.Module) -> nn.Module:
        """The base of the user's `PeftModel`, as it was before its adapter was added: LoRA layers off, and each
        `modules_to_save` module its original (PEFT's `unload()` would leave the adapter's trained copy there)."""
        inner: Any = base_of(model)
        wrapped = [
            (name, module.original_module)
            for name, module in inner.named_modules()
            if isinstance(module, self._peft.utils.ModulesToSaveWrapper)
        ]
        self._user_base_config = getattr(inner, "peft_config", None)  # unload() deletes it from the base
        base = getattr(model, "unload")()  # noqa: B009 - a PeftModel's method; typed as nn.Module here
        for name, original in wrapped:
            base.set_submodule(name, original)
        return base

    def config_for(self, values: dict[str, Any]) -> Any:
        """The trial's adapter config: the user's (or LoraConfig's defaults) with the trial's values."""
        return adapter_config(self._peft, self.user_config, self.base, values)

    def for_trial(self, values: dict[str, Any]) -> functools.partial[nn.Module]:
        """The trial's model source (what `TrialModelInit` calls): a fresh adapter with `values`."""
        return functools.partial(self.wrap, values)

    def wrap(self, values: dict[str, Any], trial: Any = None) -> nn.Module:
        self.release()  # an earlier trial's adapter, if its trial ended without finishing
        params = list(self.base.parameters())
        self.current = self._peft.get_peft_model(self.base, self.config_for(values))
        # The base parameters this adapter trains in place (bias="all", ...): the only weights a trial writes, so the
        # only ones worth a copy. A modules_to_save head is trained as a copy and needs none.
        self._trained_in_place = [(p, p.detach().clone()) for p in params if p.requires_grad]
        return self.current

    def release(self) -> None:
        """Take the trial's adapter off and put the base back as it was before the first trial."""
        if self.current is None:
            return
        unwrapped = self.current.unload()
        self.current = None
        assert unwrapped is self.base
        self._restore_base()

    def _restore_base(self) -> None:
        self._tree.restore()  # the original modules (the trained modules_to_save copies dropped), their flags
        with torch.no_grad():
            for param, value in self._trained_in_place:
                param.copy_(value)
            for name, value in self._buffers.items():
                self.base.get_buffer(name).copy_(value)
        self._trained_in_place = []

    def restore(self) -> nn.Module:
        """The model as the user gave it: the base, or the user's own `PeftModel` (the same object, put back
        together: its adapter layers, its trained head copy, its flags)."""
        self.release()
        if self.user_model is None or self._user_tree is None:
            return self.base
        self._user_tree.restore()
        if self._user_base_config is not None:
            setattr(self.base, "peft_config", self._user_base_config)  # noqa: B010 - PEFT's attribute on the base
        return self.user_model


def has_adapter_keys(keys: Iterable[str]) -> bool:
    return any(k.startswith(PEFT_PREFIX) for k in keys)
