"""`peft.<field>` search keys: a fresh PEFT adapter per trial over a base model that is loaded once.

transformers' search cannot search an adapter's settings (its issue 29391), and the workaround users write is a
`model_init` that loads the whole base model again for every trial. Here the base model is the trainer's own (built
once, by `model=` or by transformers from `model_init` at construction); each trial wraps it with a fresh adapter
(`peft.get_peft_model` with the trial's values, after transformers has set the trial's seed, so the adapter starts
from that seed), and when the trial ends the adapter is taken off again (`unload()`, which puts the original layers
back without merging) and the base's `requires_grad` flags are restored: the base weights are never written.

The adapter's configuration is the user's (`peft_config=` of TRL's trainers, or the adapter of a `PeftModel` given as
`model=`) with the trial's values, else PEFT's `LoraConfig` defaults, with the task type taken from the model's class
so that a classification head is trained as `modules_to_save`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Iterable
from typing import Any

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


def check_adapter_values(model: nn.Module | None, candidates: dict[str, list[Any]], has_model_keys: bool) -> None:
    """Raise, naming the key, for `peft.<field>` keys that would fail in a trial: no peft package, a field that
    LoraConfig (or the user's adapter config) does not have, target modules the model does not have, or `model.` keys
    alongside (the base model is shared by the trials and cannot be rebuilt with other config values)."""
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
        if field == "target_modules" and model is not None:
            for value in values:
                _check_target_modules(key, model, value)


def _check_target_modules(key: str, model: nn.Module, value: Any) -> None:
    if value == "all-linear" or value is None:
        return
    wanted = [value] if isinstance(value, str) else list(value)
    names = module_names(model)
    missing = [m for m in wanted if m not in names]
    if missing:
        raise ValueError(
            f"hp_space[{key!r}]: the model has no module named {missing}; its module names: {sorted(names)}"
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


class Adapters:
    """Hands out one fresh adapter per trial over a base model that stays the same object, and takes it off again.

    A `PeftModel` given by the user is unwrapped once at the start (its adapter's weights kept) and wrapped again,
    with those weights, by `restore()` when the search ends.
    """

    def __init__(self, model: nn.Module) -> None:
        peft = import_peft()
        self._peft = peft
        self.user_config = user_adapter_config(model)
        self._user_adapter_state: dict[str, Any] | None = None
        if self.user_config is not None:
            self._user_adapter_state = {
                k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(model).items()
            }
            model = getattr(model, "unload")()  # noqa: B009 - a PeftModel's method; typed as nn.Module here
        self.base = model
        self.requires_grad = {name: p.requires_grad for name, p in self.base.named_parameters()}
        self.current: Any = None

    def config_for(self, values: dict[str, Any]) -> Any:
        """The trial's adapter config: the user's (or LoraConfig's defaults) with the trial's values."""
        if self.user_config is not None:
            return dataclasses.replace(self.user_config, **values)
        values = dict(values)
        values.setdefault("task_type", infer_task_type(self.base))
        return self._peft.LoraConfig(**values)

    def for_trial(self, values: dict[str, Any]) -> functools.partial[nn.Module]:
        """The trial's model source (what `TrialModelInit` calls): a fresh adapter with `values`."""
        return functools.partial(self.wrap, values)

    def wrap(self, values: dict[str, Any], trial: Any = None) -> nn.Module:
        self.release()  # an earlier trial's adapter, if its trial ended without finishing
        self.current = self._peft.get_peft_model(self.base, self.config_for(values))
        return self.current

    def release(self) -> None:
        """Take the trial's adapter off the base model (without merging) and give the base its flags back."""
        if self.current is None:
            return
        unwrapped = self.current.unload()
        self.current = None
        assert unwrapped is self.base
        for name, param in self.base.named_parameters():
            param.requires_grad = self.requires_grad.get(name, param.requires_grad)

    def restore(self) -> nn.Module:
        """The model as the user gave it: the base, or the user's `PeftModel` with its own adapter weights."""
        self.release()
        if self.user_config is None or self._user_adapter_state is None:
            return self.base
        model = self._peft.get_peft_model(self.base, self.user_config)
        self._peft.set_peft_model_state_dict(model, self._user_adapter_state)
        return model


def has_adapter_keys(keys: Iterable[str]) -> bool:
    return any(k.startswith(PEFT_PREFIX) for k in keys)
