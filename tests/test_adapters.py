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
from optuna_trainer.testing import base_args, compute_metrics, make_dataset, tiny_model  # noqa: E402

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
    seen = Seen([])
    trainer = OptunaTrainer(
        model=tiny_model(),
        args=_trainer(out_dir, hp_space=space),
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
