"""Under DDP, best_model/ is the gathered weights of the best trial's best evaluation (2 gloo processes on the CPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
from transformers import BertForSequenceClassification

from optuna_trainer.output.best_model import BEST_MODEL_DIR
from optuna_trainer.study.artifacts import download_folder, open_artifact_store
from optuna_trainer.study.attrs import BEST_MODEL_ARTIFACT_ATTR
from tests.support import accelerate_launch, run_bounded, weights_hash

from .test_distributed_search import BOUND_S, ROOT, _free_port, launch_env

SCRIPT = Path(__file__).with_name("best_model_script.py")

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(BOUND_S + 60)]


def test_best_model_is_the_best_evaluations_gathered_weights(tmp_path: Path) -> None:
    command = [*accelerate_launch(2, _free_port()), str(SCRIPT), "--out", str(tmp_path)]
    returncode, output = run_bounded(command, BOUND_S, cwd=ROOT, env=launch_env())
    assert returncode == 0, output[-4000:]

    ranks = [json.loads((tmp_path / f"hashes{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["hashes"] == ranks[1]["hashes"]  # replicas in step at every evaluation
    study = optuna.load_study(study_name=tmp_path.name, storage=f"sqlite:///{tmp_path / 'study.db'}")
    best = study.best_trial
    record = json.loads((tmp_path / BEST_MODEL_DIR / "trial.json").read_text())
    assert record["number"] == best.number and record["value"] == best.value
    # The step of the best evaluation (intermediate values are keyed by samples: 8 per process x 2 processes).
    values = sorted(best.intermediate_values.items())
    best_at = next(at for at, v in values if v == min(v for _, v in values))
    assert record["step"] == best_at // 16 < 8 and record["samples"] == best_at
    saved = BertForSequenceClassification.from_pretrained(str(tmp_path / BEST_MODEL_DIR))
    at_eval = ranks[0]["hashes"][best.user_attrs["run_dir"]]
    assert weights_hash(saved) == at_eval[str(record["step"])]
    assert weights_hash(saved) != at_eval["8"]  # not the spoiled last step

    # The artifact store: each trial's two checkpoints went up (the first removed when the second arrived, the second
    # when the trial ended); what stays is the best model, the same weights as best_model/.
    for trial in study.trials:
        assert len([k for k in trial.system_attrs if k.startswith("artifacts:")]) == 2
        assert trial.user_attrs["checkpoint_artifact"] is None
    entry = study.user_attrs[BEST_MODEL_ARTIFACT_ATTR]
    assert entry["number"] == best.number and os.listdir(tmp_path / "store") == [entry["artifact_id"]]
    fetched = download_folder(open_artifact_store(str(tmp_path / "store")), entry, str(tmp_path / "fetched"))
    assert weights_hash(BertForSequenceClassification.from_pretrained(fetched)) == weights_hash(saved)
