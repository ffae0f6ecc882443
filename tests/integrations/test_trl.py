"""TRL's SFTTrainer and DPOTrainer searched end to end: a tiny Llama built from a config, a word-level tokenizer built
here, and searched keys that TRL reads outside `trainer.args` (SFT's `max_length` at dataset preparation, DPO's
`beta` copied into the trainer)."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback

pytest.importorskip("trl")
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

from optuna_trainer.integrations.trl import (  # noqa: E402
    OptunaDPOConfig,
    OptunaDPOTrainer,
    OptunaSFTConfig,
    OptunaSFTTrainer,
)
from tests.support import weights_hash  # noqa: E402

WORDS = "red green blue one two three cat dog sun moon is a the and".split()


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def tiny_llama(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config)


class SeenTrials(TrainerCallback):
    """Per trial: the arguments, the weights it starts from, and what `read(trainer)` says at the start."""

    def __init__(self, read: Any) -> None:
        self.read = read
        self.trainer: Any = None
        self.seen: list[dict[str, Any]] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.seen.append({"args": args, "start": weights_hash(model), **self.read(self.trainer)})


def preference_data(seed: int, n: int = 48) -> Dataset:
    """Two-word prompts; " red" is always chosen over " blue"."""
    rng = random.Random(seed)
    prompts = [f"{rng.choice(WORDS)} {rng.choice(WORDS)}" for _ in range(n)]
    return Dataset.from_dict({"prompt": prompts, "chosen": [" red"] * n, "rejected": [" blue"] * n})


def common_args(output_dir: str) -> dict[str, Any]:
    return dict(
        output_dir=output_dir,
        report_to="none",
        use_cpu=True,
        max_steps=4,
        per_device_train_batch_size=8,
        eval_strategy="steps",
        eval_steps=2,
        logging_steps=2,
        save_strategy="no",
        disable_tqdm=True,
        n_trials=2,
        storage="memory",
        sampler={"name": "grid"},
        pruner="none",
        search_report=False,
    )


def test_sft_search_prepares_the_data_with_each_trials_max_length(tmp_path):
    tokenizer = word_tokenizer()
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(48)]
    args = OptunaSFTConfig(
        **common_args(str(tmp_path)),
        max_length=32,
        hp_space={
            "max_length": {"type": "categorical", "choices": [4, 10]},
            "learning_rate": {"type": "categorical", "choices": [5e-3]},
        },
    )
    seen = SeenTrials(lambda t: {"longest": max(len(ids) for ids in t.train_dataset["input_ids"])})
    trainer = OptunaSFTTrainer(
        model=tiny_llama(len(tokenizer)),
        args=args,
        train_dataset=Dataset.from_dict({"text": texts[:32]}),
        eval_dataset=Dataset.from_dict({"text": texts[32:]}),
        processing_class=tokenizer,
        callbacks=[seen],
    )
    seen.trainer = trainer
    given_longest = max(len(ids) for ids in trainer.train_dataset["input_ids"])
    best = trainer.hyperparameter_search()

    assert trainer.args is args and given_longest == 13  # 12 words + eos, under the given max_length=32
    lengths = sorted((s["args"].max_length, s["longest"]) for s in seen.seen)
    assert lengths == [(4, 4), (10, 10)]  # each trial trained on data truncated to its own max_length
    assert len({s["start"] for s in seen.seen}) == 1  # no model_init: every trial starts from the same weights
    # no compute_metrics and no objective: eval_loss, minimized, as transformers does
    assert trainer.study.direction.name == "MINIMIZE" and best.objective == min(t.value for t in trainer.study.trials)
    # the user's arguments and data are back after the search
    assert max(len(ids) for ids in trainer.train_dataset["input_ids"]) == given_longest


def test_dpo_search_trains_with_each_trials_beta(tmp_path):
    tokenizer = word_tokenizer()
    data = preference_data(seed=1)
    args = OptunaDPOConfig(
        **common_args(str(tmp_path)),
        beta=0.1,
        max_length=16,
        hp_space={"beta": {"type": "categorical", "choices": [0.05, 0.5]}},
        objective_metric="rewards/margins",
        direction="maximize",
    )
    seen = SeenTrials(lambda t: {"beta": t.beta, "collator_max_length": t.data_collator.max_length})
    reference = tiny_llama(len(tokenizer))
    reference_start = weights_hash(reference)
    trainer = OptunaDPOTrainer(
        model=tiny_llama(len(tokenizer)),
        ref_model=reference,
        args=args,
        train_dataset=data.select(range(32)),
        eval_dataset=data.select(range(32, 48)),
        processing_class=tokenizer,
        callbacks=[seen],
    )
    seen.trainer = trainer
    best = trainer.hyperparameter_search()

    assert trainer.args is args
    # The loss reads trainer.beta (copied from the arguments in __init__): it follows each trial's value.
    assert sorted(s["beta"] for s in seen.seen) == [0.05, 0.5]
    assert all(s["beta"] == s["args"].beta for s in seen.seen)
    assert all(s["collator_max_length"] == 16 for s in seen.seen)
    assert len({s["start"] for s in seen.seen}) == 1
    assert weights_hash(trainer.ref_model) == reference_start  # the reference model is never trained
    # the objective is TRL's eval_rewards/margins, maximized, and each trial reported it at every evaluation
    assert trainer.study.direction.name == "MAXIMIZE"
    assert all(set(t.intermediate_values) == {16, 32} for t in trainer.study.trials)
    assert best.objective == max(t.value for t in trainer.study.trials)
    assert trainer.beta == 0.1  # back to the user's value


def test_dpo_searches_loss_type_with_single_loss_names(tmp_path):
    """`DPOConfig.loss_type` is a list of loss names; a search's choices are single names, which DPOConfig makes
    lists, and the loss each trial computes follows them (DPOTrainer keeps its own copy, `loss_types`)."""
    tokenizer = word_tokenizer()
    data = preference_data(seed=2)
    args = OptunaDPOConfig(
        **common_args(str(tmp_path)),
        max_length=16,
        hp_space={"loss_type": {"type": "categorical", "choices": ["sigmoid", "ipo"]}},
    )
    computed: list[list[str]] = []

    class Recording(OptunaDPOTrainer):
        def compute_loss(self, *args: Any, **kwargs: Any) -> Any:
            computed.append(list(self.loss_types))
            return super().compute_loss(*args, **kwargs)

    seen = SeenTrials(lambda t: {"loss_types": list(t.loss_types), "loss_weights": list(t.loss_weights)})
    trainer = Recording(
        model=tiny_llama(len(tokenizer)),
        ref_model=tiny_llama(len(tokenizer)),
        args=args,
        train_dataset=data.select(range(32)),
        eval_dataset=data.select(range(32, 48)),
        processing_class=tokenizer,
        callbacks=[seen],
    )
    seen.trainer = trainer
    trainer.hyperparameter_search()

    assert sorted(t.params["loss_type"] for t in trainer.study.trials) == ["ipo", "sigmoid"]
    assert all(t.state.name == "COMPLETE" for t in trainer.study.trials)
    by_trial = sorted((s["args"].loss_type, s["loss_types"], s["loss_weights"]) for s in seen.seen)
    assert by_trial == [(["ipo"], ["ipo"], [1.0]), (["sigmoid"], ["sigmoid"], [1.0])]
    # Each trial's loss was computed with its own loss type: one trial's steps, then the other's.
    assert sorted(tuple(k) for k, _ in itertools.groupby(computed)) == [("ipo",), ("sigmoid",)]
    assert trainer.loss_types == ["sigmoid"] and trainer.args.loss_type == ["sigmoid"]  # the user's, back


def test_a_list_field_whose_class_keeps_a_single_choice_as_it_is_is_refused(tmp_path):
    from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
    from tests.support import base_args, compute_metrics, make_dataset, tiny_model

    # TrainingArguments.label_names is a list[str] and keeps "labels" a str: the trainer would read it letter by letter.
    args = OptunaTrainingArguments(
        **base_args(tmp_path, hp_space={"label_names": {"type": "categorical", "choices": ["labels"]}})
    )
    trainer = OptunaTrainer(
        model_init=tiny_model,
        args=args,
        train_dataset=make_dataset(16),
        eval_dataset=make_dataset(8, seed=1),
        compute_metrics=compute_metrics,
    )
    with pytest.raises(ValueError, match=r"hp_space\['label_names'\]: .* keeps the choice 'labels' as it is"):
        trainer.hyperparameter_search()
    # A choice of another type than the list's items is refused when the space is read.
    with pytest.raises(ValueError, match=r"hp_space\['loss_type'\]: choice 1 \(int\) does not fit .*list\[str\]"):
        OptunaDPOConfig(
            **common_args(str(tmp_path)), hp_space={"loss_type": {"type": "categorical", "choices": ["ipo", 1]}}
        )


def test_trls_private_dataset_preparation_is_as_called():
    """integrations/trl.py prepares datasets again through TRL's private `_prepare_dataset`: its parameters must stay
    the ones it is called with (supported trl range: pyproject.toml)."""
    import inspect

    from trl import DPOTrainer, SFTTrainer

    sft = list(inspect.signature(SFTTrainer._prepare_dataset).parameters)
    dpo = list(inspect.signature(DPOTrainer._prepare_dataset).parameters)
    assert sft == ["self", "dataset", "processing_class", "args", "packing", "formatting_func", "dataset_name"]
    assert dpo == ["self", "dataset", "processing_class", "args", "dataset_name"]


def test_sft_with_peft_config_searches_the_adapter(tmp_path):
    peft = pytest.importorskip("peft")
    tokenizer = word_tokenizer()
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(48)]
    args = OptunaSFTConfig(
        **common_args(str(tmp_path)), max_length=16, hp_space={"peft.r": {"type": "categorical", "choices": [2, 4]}}
    )
    seen = SeenTrials(lambda t: {"r": t.model.peft_config["default"].r, "adapters": sorted(t.model.peft_config)})
    user_config = peft.LoraConfig(task_type="CAUSAL_LM", r=8, target_modules=["q_proj", "v_proj"])
    trainer = OptunaSFTTrainer(
        model=tiny_llama(len(tokenizer)),
        args=args,
        train_dataset=Dataset.from_dict({"text": texts[:32]}),
        eval_dataset=Dataset.from_dict({"text": texts[32:]}),
        processing_class=tokenizer,
        peft_config=user_config,
        callbacks=[seen],
    )
    seen.trainer = trainer
    trainer.hyperparameter_search()
    assert sorted(s["r"] for s in seen.seen) == [2, 4] and all(s["adapters"] == ["default"] for s in seen.seen)
    # after the search the trainer holds the user's adapter (r=8) again
    assert isinstance(trainer.model, peft.PeftModel) and trainer.model.peft_config["default"].r == 8
    assert (tmp_path / "best_model" / "adapter_config.json").is_file()
