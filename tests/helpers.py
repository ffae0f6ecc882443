"""Tiny, fast building blocks shared by the tests: a BERT built from a config and a learnable synthetic task."""

from __future__ import annotations

import os
import socket
from typing import Any

import numpy as np
import pytest
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification

VOCAB = 64
SEQ_LEN = 8


def tiny_config(**overrides: Any) -> BertConfig:
    values = dict(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=SEQ_LEN + 2,
        num_labels=2,
    )
    values.update(overrides)
    return BertConfig(**values)


def tiny_model(trial: Any = None) -> BertForSequenceClassification:
    """A `model_init` with transformers' signature."""
    return BertForSequenceClassification(tiny_config())


def make_dataset(n: int = 64, seed: int = 0) -> Dataset:
    """Label 1 iff the first token is in the upper half of the vocabulary: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, VOCAB, size=(n, SEQ_LEN))
    labels = (ids[:, 0] >= VOCAB // 2 + 2).astype(np.int64)
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": np.ones_like(ids).tolist(), "labels": labels.tolist()}
    )


def compute_metrics(pred: Any) -> dict[str, float]:
    return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}


def base_args(output_dir: str | os.PathLike, **overrides: Any) -> dict[str, Any]:
    """Arguments for a CPU run of a few steps, evaluated often, with no files beyond what a test asks for."""
    values: dict[str, Any] = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        max_steps=8,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=32,
        eval_strategy="steps",
        eval_steps=2,
        logging_steps=2,
        save_strategy="no",
        learning_rate=1e-3,
        storage="memory",
        n_trials=3,
        seed=0,
    )
    values.update(overrides)
    return values


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip with a clear reason where the server does not answer; fail instead under OPTUNA_TRAINER_REQUIRE_SERVICES=1."""
    if _answers(host, port):
        return
    reason = f"{name} does not answer at {host}:{port}"
    if os.environ.get("OPTUNA_TRAINER_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}, and OPTUNA_TRAINER_REQUIRE_SERVICES=1 requires it")
    pytest.skip(reason)
