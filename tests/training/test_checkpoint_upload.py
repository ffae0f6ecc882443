"""Each trial's newest checkpoint in the artifact store (training/checkpoint_upload.py), and the best model there too
(output/best_model.py): what the store holds at every save and at the end, and a failed upload."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from optuna.artifacts import get_all_artifact_meta
from transformers import TrainerCallback

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from optuna_trainer.study.attrs import ARTIFACT_STORE_ATTR, BEST_MODEL_ARTIFACT_ATTR
from tests.support import base_args, capture_logs, compute_metrics, make_dataset, tiny_model

HP = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


def _trainer(out_dir: Path, store: Path, callbacks=(), **overrides) -> OptunaTrainer:
    values = dict(
        storage=None,
        n_trials=3,
        pruner="none",
        sampler={"name": "random", "seed": 0},
        save_strategy="steps",
        save_steps=2,
        hp_space=HP,
        artifact_store=str(store),
        search_report=False,
    )
    values.update(overrides)
    return OptunaTrainer(
        model_init=tiny_model,
        args=OptunaTrainingArguments(**base_args(out_dir, **values)),
        train_dataset=make_dataset(),
        eval_dataset=make_dataset(32, seed=1),
        compute_metrics=compute_metrics,
        callbacks=list(callbacks),
    )


class _WatchStore(TrainerCallback):
    """At each step after a save (the upload has run), what the store holds, and the trial's recorded artifact."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.seen: list[tuple[str, int, set[str]]] = []

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step and state.global_step % 2 == 0:
            self.seen.append((os.path.basename(args.output_dir), state.global_step, set(os.listdir(self.store))))


def test_store_holds_each_trials_newest_checkpoint_then_only_the_best_model(out_dir, tmp_path):
    store = tmp_path / "store"
    watch = _WatchStore(store)
    trainer = _trainer(out_dir, store, callbacks=[watch])
    best = trainer.hyperparameter_search()
    study = trainer.study

    # While a trial trains, the store holds exactly one checkpoint of it (the newest; the one before was removed),
    # besides the best model of the trials before it.
    for run, step, files in watch.seen:
        number = int(run.rsplit("-", 1)[-1])
        best_files = 1 if number > 0 else 0
        assert len(files) == 1 + best_files, (run, step, files)
    # Each checkpoint was an artifact of its trial in Optuna's own records (4 saves per trial of 8 steps).
    for trial in study.trials:
        assert len([k for k in trial.system_attrs if k.startswith("artifacts:")]) == 4
        assert trial.user_attrs["checkpoint_artifact"] is None  # removed when the trial ended
    # At the end: one artifact, the best model, named by the study.
    entry = study.user_attrs[BEST_MODEL_ARTIFACT_ATTR]
    assert os.listdir(store) == [entry["artifact_id"]]
    assert (entry["number"], entry["value"]) == (int(best.run_id), best.objective)
    assert study.user_attrs[ARTIFACT_STORE_ATTR] == str(store)
    assert entry["artifact_id"] in [meta.artifact_id for meta in get_all_artifact_meta(study)]


class _BreakStore(TrainerCallback):
    """Makes the store unwritable (a file where its directory was) during trial 1 only."""

    def __init__(self, store: Path) -> None:
        self.store = store

    def on_train_begin(self, args, state, control, **kwargs):
        run = os.path.basename(args.output_dir)
        if run == "run-1":
            shutil.move(self.store, str(self.store) + ".away")
            self.store.write_text("not a directory")
        elif run == "run-2":
            self.store.unlink()
            shutil.move(str(self.store) + ".away", self.store)


def test_a_failed_upload_fails_that_trial_and_the_search_goes_on(out_dir, tmp_path):
    store = tmp_path / "store"
    trainer = _trainer(out_dir, store, callbacks=[_BreakStore(store)])
    trainer.hyperparameter_search()
    study = trainer.study
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    reason = study.trials[1].user_attrs["fail_reason"]
    assert reason.startswith("ArtifactUploadError: artifact_store: uploading ")
    assert "checkpoint-2" in reason and "NotADirectoryError" in reason
    # best_model/ is one of the complete trials', and the store's best model is the study's best.
    record = json.loads((out_dir / "best_model" / "trial.json").read_text())
    assert record["number"] == study.best_trial.number
    assert study.user_attrs[BEST_MODEL_ARTIFACT_ATTR]["number"] == study.best_trial.number


def test_without_checkpoints_only_the_best_model_goes_up_and_the_settings_say_so(out_dir, tmp_path):
    store = tmp_path / "store"
    trainer = _trainer(out_dir, store, save_strategy="no", n_trials=2)
    with capture_logs() as logs:
        trainer.hyperparameter_search()
    assert "artifact_store: save_strategy is 'no', so trials save no checkpoint to resume from" in logs.text
    study = trainer.study
    assert all("checkpoint_artifact" not in t.user_attrs for t in study.trials)
    assert os.listdir(store) == [study.user_attrs[BEST_MODEL_ARTIFACT_ATTR]["artifact_id"]]
