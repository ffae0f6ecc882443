"""`optuna-trainer best-model`: the study's best model written into a folder on any machine (output/best_model.py's
`fetch_best_model`, from the artifact store; from the local best_model/ without one), and what it refuses."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from transformers import BertForSequenceClassification, Trainer, TrainingArguments

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from optuna_trainer.cli import main
from tests.support import base_args, compute_metrics, make_dataset, tiny_model, weights_hash

HP = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


def _search(out_dir: Path, **overrides) -> OptunaTrainer:
    values = dict(
        storage=f"sqlite:///{out_dir.parent / 'study.db'}",
        study_name="anywhere",
        n_trials=3,
        pruner="none",
        sampler={"name": "random", "seed": 1},
        hp_space=HP,
        search_report=False,
    )
    values.update(overrides)
    trainer = OptunaTrainer(
        model_init=tiny_model,
        args=OptunaTrainingArguments(**base_args(out_dir, **values)),
        train_dataset=make_dataset(),
        eval_dataset=make_dataset(32, seed=1),
        compute_metrics=compute_metrics,
    )
    trainer.hyperparameter_search()
    return trainer


def _evaluate(folder: Path, tmp_path: Path) -> float:
    model = BertForSequenceClassification.from_pretrained(folder)
    args = TrainingArguments(output_dir=str(tmp_path / "eval"), use_cpu=True, report_to="none", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, eval_dataset=make_dataset(32, seed=1), compute_metrics=compute_metrics)
    return trainer.evaluate()["eval_accuracy"]


def test_from_the_store_after_output_dir_is_gone(tmp_path):
    out_dir, store = tmp_path / "out", tmp_path / "store"
    study = _search(out_dir, artifact_store=str(store)).study
    saved_hash = weights_hash(BertForSequenceClassification.from_pretrained(out_dir / "best_model"))
    shutil.rmtree(out_dir)  # the machine that ran the best trial is gone

    dest = tmp_path / "fetched"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    # No --artifact-store: the study records the one the search used.
    assert main(["best-model", "--storage", storage, "--study-name", "anywhere", "--output", str(dest)]) == 0
    record = json.loads((dest / "trial.json").read_text())
    assert (record["number"], record["value"]) == (study.best_trial.number, study.best_value)
    assert weights_hash(BertForSequenceClassification.from_pretrained(dest)) == saved_hash
    # It re-evaluates to the value the study records.
    assert _evaluate(dest, tmp_path) == study.best_value


def test_without_a_store_from_the_local_best_model(tmp_path):
    out_dir = tmp_path / "out"
    study = _search(out_dir).study
    dest = tmp_path / "fetched"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["best-model", "--storage", storage, "--output", str(dest)]) == 0
    assert json.loads((dest / "trial.json").read_text())["number"] == study.best_trial.number
    assert _evaluate(dest, tmp_path) == study.best_value

    # Gone from this machine, and no store: said, not guessed.
    shutil.rmtree(out_dir)
    with pytest.raises(SystemExit, match=r"no best model of trial \d+ in an artifact store, and .* is not on this"):
        main(["best-model", "--storage", storage, "--output", str(tmp_path / "again")])


def test_refusals(tmp_path):
    out_dir, store = tmp_path / "out", tmp_path / "store"
    _search(out_dir, artifact_store=str(store), n_trials=1)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="exists and is not empty"):
        main(["best-model", "--storage", storage, "--output", str(full)])
    assert (full / "keep.txt").read_text() == "mine"
    import optuna

    optuna.create_study(storage=storage, study_name="empty")
    with pytest.raises(SystemExit, match="study 'empty' has no completed trial yet: no best model to write"):
        main(["best-model", "--storage", storage, "--study-name", "empty", "--output", str(tmp_path / "e")])
    optuna.create_study(storage=storage, study_name="two", directions=["minimize", "maximize"])
    with pytest.raises(SystemExit, match="study 'two' has 2 objectives: no single best model"):
        main(["best-model", "--storage", storage, "--study-name", "two", "--output", str(tmp_path / "t")])
    with pytest.raises(SystemExit, match="artifact_store: unknown scheme 'gs'"):
        main(
            [
                "best-model",
                "--storage",
                storage,
                "--study-name",
                "anywhere",
                "--output",
                str(tmp_path / "x"),
                "--artifact-store",
                "gs://b",
            ]
        )


class TestPublish:
    """The study's best model in the store is replaced only by a better one; the loser's upload is removed."""

    @staticmethod
    def _folder(tmp_path: Path, number: int, value: float) -> Path:
        folder = tmp_path / f"best-{number}"
        folder.mkdir()
        (folder / "trial.json").write_text(json.dumps({"number": number, "value": value}))
        return folder

    @pytest.mark.parametrize(
        "direction, values, named", [("maximize", [0.6, 0.8, 0.7], 1), ("minimize", [0.6, 0.8, 0.5], 2)]
    )
    def test_compare_and_replace(self, tmp_path, direction, values, named):
        import optuna

        from optuna_trainer.output.best_model import publish_best_model
        from optuna_trainer.study.artifacts import open_artifact_store
        from optuna_trainer.study.attrs import BEST_MODEL_ARTIFACT_ATTR
        from optuna_trainer.study.claims import local_lock

        store = open_artifact_store(str(tmp_path / "store"))
        study = optuna.create_study(direction=direction)
        won = [
            publish_best_model(
                store, study, str(self._folder(tmp_path, n, v)), {"number": n, "value": v}, local_lock()
            )
            for n, v in enumerate(values)
        ]
        assert won == [True, direction == "maximize", direction == "minimize"]
        entry = study.user_attrs[BEST_MODEL_ARTIFACT_ATTR]
        assert (entry["number"], entry["value"]) == (named, values[named])
        assert os.listdir(tmp_path / "store") == [entry["artifact_id"]]  # the others were removed
