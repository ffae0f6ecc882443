"""peft.<field> keys: the base model loaded once, a fresh adapter per trial from the trial's seed, nothing of an
earlier trial left, the best adapter saved, and bad keys refused before training."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from transformers import TrainerCallback

peft = pytest.importorskip("peft")

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments  # noqa: E402
from tests.support import base_args, compute_metrics, make_dataset, tiny_model  # noqa: E402

TRAIN, EVAL = make_dataset(64), make_dataset(32, seed=1)
SPACE = {
    "peft.r": {"type": "categorical", "choices": [2, 4]},
    "learning_rate": {"type": "categorical", "choices": [1e-3, 1e-2]},
}


def _hash(tensors) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().float().numpy().tobytes())
    return digest.hexdigest()


class Seen(TrainerCallback):
    """Per trial: the base parameters' hash at the start and the end, the adapter's initial weights, its names."""

    def __init__(self, base_params) -> None:
        self.base_params = base_params
        self.trials: list[dict] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        lora_a = [p for n, p in model.named_parameters() if "lora_A" in n]
        self.trials.append(
            {
                "base_start": _hash(self.base_params),
                "adapters": sorted(model.peft_config),
                "r": model.peft_config["default"].r,
                "lora_init": _hash(lora_a),
                "trainable": sorted({n.split(".")[-2] for n, p in model.named_parameters() if p.requires_grad}),
            }
        )

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.trials[-1]["base_end"] = _hash(self.base_params)


def _trainer(out_dir, **overrides):
    values = base_args(out_dir, n_trials=4, sampler="grid", pruner="none", hp_space=SPACE, storage="memory")
    values.update(overrides)
    return OptunaTrainingArguments(**values)


def test_one_base_model_a_fresh_adapter_per_trial(out_dir):
    torch.manual_seed(0)
    model = tiny_model()
    base_params = [p for _, p in model.named_parameters()]
    before = _hash(base_params)
    seen = Seen(base_params)
    trainer = OptunaTrainer(
        model=model,
        args=_trainer(out_dir),
        train_dataset=TRAIN,
        eval_dataset=EVAL,
        compute_metrics=compute_metrics,
        callbacks=[seen],
    )
    best = trainer.hyperparameter_search()

    assert len(seen.trials) == 4
    for trial in seen.trials:
        # the shared base, bit-identical at the start and the end of every trial
        assert trial["base_start"] == trial["base_end"] == before
        assert trial["adapters"] == ["default"]  # no adapter of an earlier trial
        assert "classifier" in trial["trainable"] or "default" in trial["trainable"]  # the head trains (SEQ_CLS)
    # the adapter starts from the trial's seed: trials with the same r start from the same weights
    by_r: dict[int, set[str]] = {}
    for trial in seen.trials:
        by_r.setdefault(trial["r"], set()).add(trial["lora_init"])
    assert sorted(by_r) == [2, 4] and all(len(inits) == 1 for inits in by_r.values())
    # after the search: the user's model, as given (no LoRA layer, every parameter trainable again)
    assert trainer.model is model and not isinstance(trainer.model, peft.PeftModel)
    assert not [n for n, _ in model.named_parameters() if "lora_" in n]
    assert all(p.requires_grad for p in model.parameters()) and _hash(base_params) == before
    # the best adapter, loadable over the base
    saved = json.loads((out_dir / "best_model" / "trial.json").read_text())
    assert saved["number"] == int(best.run_id) and (out_dir / "best_model" / "adapter_config.json").is_file()
    loaded = peft.PeftModel.from_pretrained(tiny_model(), str(out_dir / "best_model"))
    assert loaded.peft_config["default"].r == best.hyperparameters["peft.r"]


def test_model_init_builds_the_base_once(out_dir):
    calls = []

    def model_init(trial=None):
        calls.append(trial)
        return tiny_model()

    trainer = OptunaTrainer(
        model_init=model_init,
        args=_trainer(out_dir, n_trials=2, sampler={"name": "random", "seed": 0}),
        train_dataset=TRAIN,
        eval_dataset=EVAL,
        compute_metrics=compute_metrics,
    )
    trainer.hyperparameter_search()
    assert calls == [None]  # transformers' own call at construction; no trial loaded the base again
    assert [t.state.name for t in trainer.study.trials] == ["COMPLETE", "COMPLETE"]


def test_a_peft_model_given_keeps_its_own_config_and_weights(out_dir):
    model = peft.get_peft_model(tiny_model(), peft.LoraConfig(task_type="SEQ_CLS", r=8, lora_dropout=0.0))
    adapter_before = {k: v.clone() for k, v in peft.get_peft_model_state_dict(model).items()}
    seen = Seen([])
    trainer = OptunaTrainer(
        model=model,
        args=_trainer(out_dir, n_trials=2, hp_space={"peft.lora_alpha": {"type": "categorical", "choices": [4, 32]}}),
        train_dataset=TRAIN,
        eval_dataset=EVAL,
        compute_metrics=compute_metrics,
        callbacks=[seen],
    )
    trainer.hyperparameter_search()
    assert [t["r"] for t in seen.trials] == [8, 8]  # the user's r, the trial's lora_alpha
    restored = peft.get_peft_model_state_dict(trainer.model)
    assert restored.keys() == adapter_before.keys()
    assert all(torch.equal(restored[k], adapter_before[k]) for k in restored)


@pytest.mark.parametrize(
    "space,message",
    [
        (
            {"peft.rank": {"type": "categorical", "choices": [2, 4]}},
            r"LoraConfig has no field 'rank' \(did you mean 'peft.r'\?\)",
        ),
        (
            {"peft.target_modules": {"type": "categorical", "choices": ["query", "qkv"]}},
            r"the model has no module named \['qkv'\]; its module names: .*'query'",
        ),
        (
            {
                "peft.r": {"type": "categorical", "choices": [2]},
                "model.hidden_dropout_prob": {"type": "categorical", "choices": [0.0, 0.2]},
            },
            "model.<attribute> and peft.<field> keys together",
        ),
    ],
    ids=["unknown_field", "target_modules", "with_model_keys"],
)
def test_bad_adapter_keys_are_refused_before_training(out_dir, space, message):
    _assert_refused_before_training(out_dir, message, hp_space=space)


def _assert_refused_before_training(out_dir, message: str, **overrides) -> None:
    """The search raises `message` before any trial trains, and no study is created."""
    seen = Seen([])
    trainer = OptunaTrainer(
        model=tiny_model(),
        args=_trainer(out_dir, **overrides),
        train_dataset=TRAIN,
        eval_dataset=EVAL,
        compute_metrics=compute_metrics,
        callbacks=[seen],
    )
    with pytest.raises(ValueError, match=message):
        trainer.hyperparameter_search()
    assert seen.trials == [] and trainer.study is None


def test_a_callable_space_with_adapter_keys(out_dir):
    def hp_space(trial):
        return {"peft.r": trial.suggest_categorical("peft.r", [2, 4]), "learning_rate": 1e-3}

    seen = Seen([])
    trainer = OptunaTrainer(
        model=tiny_model(),
        args=_trainer(out_dir, n_trials=2, sampler={"name": "random", "seed": 0}),
        train_dataset=TRAIN,
        eval_dataset=EVAL,
        compute_metrics=compute_metrics,
        callbacks=[seen],
    )
    trainer.hyperparameter_search(hp_space=hp_space)
    assert [t["r"] for t in seen.trials] == [t.params["peft.r"] for t in trainer.study.trials]


def test_adapter_keys_without_peft_say_which_extra(out_dir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    trainer = OptunaTrainer(
        model=tiny_model(),
        args=_trainer(out_dir),
        train_dataset=TRAIN,
        eval_dataset=EVAL,
        compute_metrics=compute_metrics,
    )
    with pytest.raises(ImportError, match=r'peft.<field> keys .* pip install "optuna-trainer\[peft\]"'):
        trainer.hyperparameter_search()
    assert trainer.study is None


# ---- issue 22 item 2: every trial starts from the pristine base, and the base is bit-identical after the search ---


def _state_hash(named) -> str:
    """sha256 over name, dtype, shape and bytes of every tensor (parameters and buffers, heads included)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda item: item[0]):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        t = tensor.detach().cpu().contiguous().reshape(-1)  # 1-d: a 0-d tensor cannot be viewed as bytes
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _full_hash(model) -> str:
    """Every parameter and buffer, under every name it has (tied and non-persistent ones too)."""
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    return _state_hash(named)


def _base_part(model) -> list:
    """A trial's PeftModel seen as the base it wraps: the LoRA layers' `base_layer`, the `original_module` of a
    `modules_to_save` wrapper, the wrapped embedding of trainable tokens; the adapter's own tensors left out."""
    inner = model.get_base_model()
    out = []
    named = list(inner.named_parameters(remove_duplicate=False)) + list(inner.named_buffers(remove_duplicate=False))
    for name, tensor in named:
        parts = name.split(".")
        if any(p.startswith("lora_") or p in ("modules_to_save", "trainable_tokens_delta") for p in parts):
            continue
        parts = [p for p in parts if p not in ("base_layer", "original_module", "token_adapter")]
        out.append((".".join(parts), tensor))
    return out


class StartHashes(TrainerCallback):
    """The hash of the base each trial starts from, and whether the head it trains starts as the base's head."""

    def __init__(self) -> None:
        self.starts: list[str] = []
        self.heads_pristine: list[bool] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.starts.append(_state_hash(_base_part(model)))
        wrapper = model.get_base_model().classifier
        self.heads_pristine.append(
            all(
                torch.equal(a, b)
                for a, b in zip(
                    wrapper.original_module.state_dict().values(),
                    wrapper.modules_to_save["default"].state_dict().values(),
                    strict=True,
                )
            )
        )


TRAINED_HEAD_SPACE = {
    "peft.r": {"type": "categorical", "choices": [2, 4]},
    "learning_rate": {"type": "categorical", "choices": [5e-2]},  # large enough that the head moves in 8 steps
}


def _search(out_dir, model=None, model_init=None, space=None, n_trials=3):
    starts = StartHashes()
    trainer = OptunaTrainer(
        model=model,
        model_init=model_init,
        args=_trainer(
            out_dir,
            n_trials=n_trials,
            sampler={"name": "random", "seed": 0},
            hp_space=space or TRAINED_HEAD_SPACE,
            # Every trial trains, repeats of a configuration too: each must start from the pristine base.
            skip_duplicates=False,
        ),
        train_dataset=TRAIN,
        eval_dataset=EVAL,
        compute_metrics=compute_metrics,
        callbacks=[starts],
    )
    return trainer, starts


@pytest.mark.parametrize(
    "space",
    [
        TRAINED_HEAD_SPACE,
        # bias="all" trains every base bias in place: those must be put back too
        {**TRAINED_HEAD_SPACE, "peft.bias": {"type": "categorical", "choices": ["all"]}},
    ],
    ids=["lora", "bias_all"],
)
def test_every_trial_starts_from_the_pristine_base_and_leaves_it_bit_identical(out_dir, space):
    torch.manual_seed(0)
    model = tiny_model()
    before = _full_hash(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    head = model.classifier
    trainer, starts = _search(out_dir, model=model, space=space)
    trainer.hyperparameter_search()

    assert [t.state.name for t in trainer.study.trials] == ["COMPLETE"] * 3
    assert starts.starts == [before] * 3  # every trial from the same base: head, biases, buffers and all
    assert starts.heads_pristine == [True] * 3
    assert trainer.model is model and model.classifier is head  # the same objects, not the trained copy
    assert _full_hash(model) == before
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_model_init_base_is_pristine_for_every_trial(out_dir):
    built = []

    def model_init(trial=None):
        torch.manual_seed(0)
        built.append(tiny_model())
        return built[-1]

    trainer, starts = _search(out_dir, model_init=model_init)
    before = _full_hash(trainer.model)
    trainer.hyperparameter_search()
    assert len(built) == 1 and starts.starts == [before] * 3
    assert _full_hash(built[0]) == before


def test_a_peft_model_given_is_bit_identical_after_the_search(out_dir):
    torch.manual_seed(0)
    config = peft.LoraConfig(task_type="SEQ_CLS", r=8, lora_dropout=0.0, trainable_token_indices=[5, 6])
    model = peft.get_peft_model(tiny_model(), config)
    with torch.no_grad():  # the user's adapter as trained: head copy, LoRA B and token deltas away from their init
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.01 * torch.randn_like(param))
    before = _full_hash(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    base_before = _state_hash(_base_part(model))
    trainer, starts = _search(
        out_dir,
        model=model,
        space={
            "peft.lora_alpha": {"type": "categorical", "choices": [4, 32]},
            "learning_rate": {"type": "categorical", "choices": [5e-2]},
        },
    )
    trainer.hyperparameter_search()

    assert [t.state.name for t in trainer.study.trials] == ["COMPLETE"] * 3
    assert starts.starts == [base_before] * 3  # each trial: the user's base (original head), a fresh adapter
    assert trainer.model is model and _full_hash(model) == before
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert sorted(model.peft_config) == ["default"] and model.peft_config["default"].lora_alpha == config.lora_alpha


# ---- issue 22 item 3: PEFT values refused before training, naming the key -----------------------------------------


@pytest.mark.parametrize(
    "key,spec,message",
    [
        (
            "peft.r",
            {"type": "categorical", "choices": [2.5, 4]},
            r"hp_space\['peft.r'\]: 2.5 is a float; r must be an int >= 1",
        ),
        ("peft.r", {"type": "categorical", "choices": [0, 4]}, r"hp_space\['peft.r'\]: 0 .*r must be an int >= 1"),
        (
            "peft.r",
            {"type": "float", "low": 1.0, "high": 8.0},
            r"hp_space\['peft.r'\]: 1.0 is a float; r must be an int >= 1",
        ),
        (
            "peft.lora_dropout",
            {"type": "categorical", "choices": ["0.1"]},
            r"hp_space\['peft.lora_dropout'\]: '0.1' is a str; lora_dropout must be a float in \[0, 1\)",
        ),
        (
            "peft.lora_dropout",
            {"type": "float", "low": 0.0, "high": 1.0},
            r"hp_space\['peft.lora_dropout'\]: 1.0 .*in \[0, 1\)",
        ),
        (
            "peft.lora_alpha",
            {"type": "categorical", "choices": [0, 8]},
            r"hp_space\['peft.lora_alpha'\]: 0 .*lora_alpha must be a number > 0",
        ),
        (
            "peft.use_rslora",
            {"type": "categorical", "choices": ["yes"]},
            r"hp_space\['peft.use_rslora'\]: 'yes' is a str; use_rslora must be a bool",
        ),
        (
            "peft.bias",
            {"type": "categorical", "choices": ["none", "some"]},
            r"hp_space\['peft.bias'\]: 'some' .*one of \['none', 'all', 'lora_only'\]",
        ),
        (
            "peft.init_lora_weights",
            {"type": "categorical", "choices": [True, "pissa"]},
            r"hp_space\['peft.init_lora_weights'\]: 'pissa' rewrites the base model's weights",
        ),
    ],
    ids=[
        "r_float",
        "r_zero",
        "r_float_range",
        "dropout_str",
        "dropout_one",
        "alpha_zero",
        "rslora_str",
        "bias",
        "pissa",
    ],
)
def test_bad_adapter_values_are_refused_before_training(out_dir, key, spec, message):
    _assert_refused_before_training(out_dir, message, hp_space={key: spec}, sampler={"name": "random", "seed": 0})


def test_a_callable_space_with_a_bad_adapter_value_is_refused(out_dir):
    trainer = OptunaTrainer(
        model=tiny_model(),
        args=_trainer(out_dir, sampler={"name": "random", "seed": 0}),
        train_dataset=TRAIN,
        eval_dataset=EVAL,
        compute_metrics=compute_metrics,
    )
    with pytest.raises(ValueError, match=r"hp_space\['peft.r'\]: 0.5 is a float; r must be an int >= 1"):
        trainer.hyperparameter_search(hp_space=lambda trial: {"peft.r": trial.suggest_float("peft.r", 0.5, 0.5)})
    assert trainer.study is None


def test_target_modules_as_module_names_work(out_dir):
    """Choices are module names ("query"), comma-separated names ("query,value") or "all-linear": each trial's
    adapter is on exactly those modules (PEFT alone would read a string as a regex over full names and match none)."""
    seen: list[set[str]] = []

    class Targets(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen.append({n.split(".")[-2] for n, _ in model.named_modules() if n.endswith(".lora_A")})

    space = {"peft.target_modules": {"type": "categorical", "choices": ["query", "query,value", "value, key"]}}
    trainer = OptunaTrainer(
        model=tiny_model(),
        args=_trainer(out_dir, n_trials=3, hp_space=space),
        train_dataset=TRAIN,
        eval_dataset=EVAL,
        compute_metrics=compute_metrics,
        callbacks=[Targets()],
    )
    trainer.hyperparameter_search()
    assert [t.state.name for t in trainer.study.trials] == ["COMPLETE"] * 3
    chosen = [t.params["peft.target_modules"] for t in trainer.study.trials]
    assert seen == [{m.strip() for m in c.split(",")} for c in chosen]
    assert sorted(chosen) == ["query", "query,value", "value, key"]


def test_target_modules_not_module_names_are_refused_with_the_form_that_works(out_dir):
    space = {"peft.target_modules": {"type": "categorical", "choices": [".*query"]}}
    trainer = OptunaTrainer(
        model=tiny_model(),
        args=_trainer(out_dir, hp_space=space),
        train_dataset=TRAIN,
        eval_dataset=EVAL,
        compute_metrics=compute_metrics,
    )
    with pytest.raises(
        ValueError,
        match=r"hp_space\['peft.target_modules'\]: the model has no module named \['.\*query'\].*'query,value'",
    ):
        trainer.hyperparameter_search()
    assert trainer.study is None


def test_buffers_updated_in_training_are_put_back():
    """Running statistics change in place in training mode, under a frozen base: release() puts them back."""
    from optuna_trainer.training.adapters import Adapters

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)).eval()
    before = _full_hash(model)
    adapters = Adapters(model)
    trial_model = adapters.wrap({"target_modules": "0", "r": 2})
    trial_model.train()
    trial_model(torch.randn(8, 4))  # BatchNorm's running_mean, running_var, num_batches_tracked move
    assert _full_hash(model) != before
    adapters.release()
    assert _full_hash(model) == before and not model.training and not model[1].training
    assert adapters.restore() is model
