"""SentenceTransformerTrainer searched end to end on a tiny randomly initialised sentence model (one-layer BERT and
mean pooling, seconds on a CPU): the quick tier's test of optuna_trainer/integrations/sentence_transformers.py.
test_sentence_transformers.py runs the same search on the packaged all-MiniLM-L6-v2 (the `data` kind)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from datasets import Dataset
from transformers import BertModel, BertTokenizerFast, TrainerCallback, TrainingArguments

pytest.importorskip("sentence_transformers")
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments  # noqa: E402
from sentence_transformers.sentence_transformer import losses  # noqa: E402
from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator  # noqa: E402
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer  # noqa: E402

from optuna_trainer import OptunaSearchArguments  # noqa: E402
from optuna_trainer.integrations.sentence_transformers import (  # noqa: E402
    OptunaSentenceTransformerTrainer,
    OptunaSentenceTransformerTrainingArguments,
)
from optuna_trainer.trainer import OptunaSearchMixin  # noqa: E402
from tests.support import tiny_config, weights_hash  # noqa: E402

POSITIVE = "good great fine superb moving".split()
NEGATIVE = "bad dull awful boring flat".split()
WORDS = ["the", "film", "was", "a", "movie", *POSITIVE, *NEGATIVE]


def pairs(n: int, seed: int) -> tuple[list[str], list[str], list[float]]:
    """Two reviews are similar (1.0) when both are positive or both negative."""
    rng = random.Random(seed)
    first, second, scores = [], [], []
    for _ in range(n):
        a, b = rng.choice(POSITIVE + NEGATIVE), rng.choice(POSITIVE + NEGATIVE)
        first.append(f"the film was {a}")
        second.append(f"a {b} movie")
        scores.append(1.0 if (a in POSITIVE) == (b in POSITIVE) else 0.0)
    return first, second, scores


@pytest.fixture
def tiny_sentence_model(tmp_path) -> SentenceTransformer:
    """A one-layer BERT (hidden 16) over the reviews' words with mean pooling, randomly initialised (seeded)."""
    import torch

    folder = tmp_path / "tiny-st"
    folder.mkdir()
    # `vocab=`, not `vocab_file=`: transformers 5 ignores the latter and every word becomes [UNK].
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)})
    config = tiny_config(vocab_size=tokenizer.vocab_size, max_position_embeddings=16)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    encoder = Transformer(str(folder), max_seq_length=8)
    return SentenceTransformer(modules=[encoder, Pooling(encoder.get_embedding_dimension())], device="cpu")


def search_args(output_dir, **overrides) -> OptunaSentenceTransformerTrainingArguments:
    """A grid search of a few CPU steps, scored by the `dev` evaluator's Spearman correlation."""
    values = dict(
        output_dir=str(output_dir),
        report_to="none",
        use_cpu=True,
        max_steps=4,
        per_device_train_batch_size=8,
        eval_strategy="steps",
        eval_steps=2,
        logging_steps=2,
        save_strategy="no",
        disable_tqdm=True,
        hp_space={"learning_rate": {"type": "categorical", "choices": [1e-4, 1e-9]}},
        n_trials=2,
        storage="memory",
        sampler={"name": "grid"},
        pruner="none",
        search_report=False,
        objective_metric="dev_spearman_cosine",
        direction="maximize",
    )
    values.update(overrides)
    return OptunaSentenceTransformerTrainingArguments(**values)


class StartWeights(TrainerCallback):
    def __init__(self) -> None:
        self.hashes: list[str] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.hashes.append(weights_hash(model))


def similarity_trainer(model: Any, args: Any, callbacks: list[Any]) -> OptunaSentenceTransformerTrainer:
    """The trainer of the sentence-transformers tests: the similarity of review pairs learned with a cosine loss,
    scored by a `dev` evaluator only (no eval_dataset)."""
    s1, s2, score = pairs(32, 0)
    return OptunaSentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"sentence1": s1, "sentence2": s2, "score": score}),
        loss=losses.CosineSimilarityLoss(model),
        evaluator=EmbeddingSimilarityEvaluator(*pairs(16, 1), name="dev"),
        callbacks=callbacks,
    )


def search_similarity(model: Any, args: Any) -> tuple[Any, float, StartWeights, Any]:
    """Search with `similarity_trainer`: the trainer, the untrained model's score, the start-weights recorder and the
    best run."""
    untrained = EmbeddingSimilarityEvaluator(*pairs(16, 1), name="dev")(model)["dev_spearman_cosine"]
    start = StartWeights()
    trainer = similarity_trainer(model, args, [start])
    return trainer, untrained, start, trainer.hyperparameter_search()


def test_the_classes_join_the_search_and_sentence_transformers():
    assert issubclass(OptunaSentenceTransformerTrainingArguments, OptunaSearchArguments)
    assert issubclass(OptunaSentenceTransformerTrainingArguments, SentenceTransformerTrainingArguments)
    assert issubclass(OptunaSentenceTransformerTrainingArguments, TrainingArguments)
    assert issubclass(OptunaSentenceTransformerTrainer, OptunaSearchMixin)
    # The mixin comes first, so its hyperparameter_search is the one a user calls.
    assert OptunaSentenceTransformerTrainer.hyperparameter_search is OptunaSearchMixin.hyperparameter_search


def test_tiny_sentence_transformer_search_scores_each_trial_by_its_evaluator(tmp_path, tiny_sentence_model):
    model = tiny_sentence_model
    args = search_args(tmp_path / "out", hp_space={"learning_rate": {"type": "categorical", "choices": [1e-2, 1e-9]}})
    trainer, untrained, start, best = search_similarity(model, args)

    trials = {t.params["learning_rate"]: t for t in trainer.study.trials}
    assert set(trials) == {1e-2, 1e-9}
    assert all(set(t.intermediate_values) == {16, 32} for t in trials.values())  # reported at every evaluation
    # A learning rate too small to move the weights scores as the untrained model: the evaluator scored the
    # trial's own model, which started from the given weights ...
    assert trials[1e-9].value == pytest.approx(untrained, abs=1e-3)
    # ... while the loss trained the trial's model (not the original), so its score moved.
    assert abs(trials[1e-2].value - untrained) > 1e-2
    winner = max(trials.values(), key=lambda t: t.value)
    assert best.run_id == str(winner.number) and best.objective == winner.value
    assert len(start.hashes) == 2 and len(set(start.hashes)) == 1  # each trial starts from the given weights
    assert trainer.args is args
