"""The trials progress bar: counts, best value, nesting of the per-trial bar, and quiet when disable_tqdm is set."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from transformers import ProgressCallback

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from optuna_trainer.output import progress as progress_module
from optuna_trainer.output.progress import StepsBar, TrialProgress, bars_wanted
from optuna_trainer.training.callbacks import TrialStepsProgressCallback
from tests.support import base_args, capture_logs, compute_metrics, make_dataset, tiny_model


def _finished(state: TrialState, value: float | None = None):
    return create_trial(state=state, value=value)


def test_counts_and_best(capsys):
    study = optuna.create_study(direction="maximize")
    study.add_trial(_finished(TrialState.COMPLETE, 0.7))  # resumed: counts from the start
    progress = TrialProgress(study, n_trials=5, bars=True)
    assert progress.bar.n == 1 and progress.best == 0.7
    for state, value in [
        (TrialState.PRUNED, None),
        (TrialState.FAIL, None),
        (TrialState.COMPLETE, 0.9),
        (TrialState.COMPLETE, 0.8),
    ]:
        study.add_trial(_finished(state, value))
        progress(study, study.trials[-1])
    # done counts complete and pruned trials (what n_trials counts); failed trials are shown apart.
    assert progress.bar.n == 4 and progress.bar.total == 5
    assert (progress.n_pruned, progress.n_failed, progress.best) == (1, 1, 0.9)
    progress.close()
    err = capsys.readouterr().err
    assert "4/5" in err and "pruned=1" in err and "failed=1" in err and "best=0.9" in err


def test_minimize_keeps_the_lowest():
    study = optuna.create_study(direction="minimize")
    progress = TrialProgress(study, n_trials=3, bars=True)
    for value in (0.5, 0.2, 0.4):
        study.add_trial(_finished(TrialState.COMPLETE, value))
        progress(study, study.trials[-1])
    assert progress.best == 0.2
    progress.close()


def test_disabled_draws_no_bar_but_logs_the_trial(capsys):
    study = optuna.create_study()
    with capture_logs("optuna_trainer") as logs:
        progress = TrialProgress(study, n_trials=3, disable=True)
        study.add_trial(_finished(TrialState.COMPLETE, 0.1))
        progress(study, study.trials[-1])
        progress.close()
    assert progress.bar is None and capsys.readouterr().err == ""
    assert "Trial 0 COMPLETE: value 0.1 | no parameters | no training | 1/3 done, 0 pruned, 0 failed, best 0.1" in (
        logs.text
    )


def test_not_a_terminal_means_lines():
    # pytest's stderr is not a terminal: lines, unless bars are asked for.
    assert not bars_wanted()
    study = optuna.create_study()
    assert TrialProgress(study, n_trials=1).bar is None


class PruneTrialOne(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return trial.number == 1


def _trainer(out_dir, **overrides) -> OptunaTrainer:
    args = OptunaTrainingArguments(
        **base_args(out_dir, pruner=PruneTrialOne(), search_report=False, save_best_model=False, **overrides)
    )
    return OptunaTrainer(
        model_init=tiny_model,
        args=args,
        train_dataset=make_dataset(32),
        eval_dataset=make_dataset(16, seed=1),
        compute_metrics=compute_metrics,
    )


def test_search_shows_the_trials_bar(out_dir, capsys, monkeypatch):
    monkeypatch.setattr(progress_module, "bars_wanted", lambda: True)  # as on a terminal
    trainer = _trainer(out_dir, disable_tqdm=False)
    seen = []
    original = TrialStepsProgressCallback.on_train_begin

    def spy(self, args, state, control, **kwargs):
        original(self, args, state, control, **kwargs)
        seen.append((self.training_bar.pos, self.training_bar.leave))

    TrialStepsProgressCallback.on_train_begin = spy
    try:
        trainer.hyperparameter_search()
    finally:
        TrialStepsProgressCallback.on_train_begin = original
    err = capsys.readouterr().err
    assert "trials: 100%" in err and "3/3" in err and "pruned=1" in err
    # Each trial's step bar nests under the trials bar (line 1) and goes away with its trial.
    assert [abs(pos) for pos, _ in seen] == [1, 1, 1] and not any(leave for _, leave in seen)
    # What transformers logs is on the step bar, not a dict on a line of its own; evaluations draw no bar.
    assert "eval_accuracy=" in err and "{'loss'" not in err and "{'eval_loss'" not in err and "| 1/1 [" not in err
    # After the search the trainer has transformers' own step bar back.
    kinds = [type(cb) for cb in trainer.callback_handler.callbacks]
    assert ProgressCallback in kinds and TrialStepsProgressCallback not in kinds and StepsBar not in kinds


@pytest.mark.parametrize("disable_tqdm", [True])
def test_search_quiet_with_disable_tqdm(out_dir, capsys, disable_tqdm):
    _trainer(out_dir, disable_tqdm=disable_tqdm).hyperparameter_search()
    err = capsys.readouterr().err
    assert "trials:" not in err and "pruned=" not in err


# A search whose output goes to a file, as in CI or `python train.py > log.txt 2>&1`: trial 0 completes, trial 1 is
# pruned at its first evaluation, trial 2 fails in its first evaluation (after its training started).
_LOGGED_SEARCH = """
import os
import optuna
from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from tests.support import base_args, make_dataset, tiny_model

trainer = None
def metrics(pred):
    run = os.path.basename(trainer.args.output_dir)
    if run == "run-2":
        raise RuntimeError("metric failed for trial 2")
    return {"accuracy": 0.9 if run == "run-0" else 0.1}

trainer = OptunaTrainer(
    model_init=tiny_model,
    args=OptunaTrainingArguments(**base_args(
        os.environ["OUT_DIR"], disable_tqdm=False, logging_steps=1,
        hp_space={"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        pruner={"name": "threshold", "lower": 0.5}, save_best_model=False,
    )),
    train_dataset=make_dataset(32),
    eval_dataset=make_dataset(16, seed=1),
    compute_metrics=metrics,
)
trainer.hyperparameter_search(catch=(RuntimeError,), n_trials=3)
"""


@pytest.mark.slow  # 15-25 s: a fresh interpreter (imports) and a search of 4 trials
def test_log_file_has_one_line_per_trial_start_and_end(out_dir, tmp_path):
    log = tmp_path / "search.log"
    root = Path(__file__).resolve().parents[2]
    with open(log, "w") as f:
        subprocess.run(
            [sys.executable, "-c", _LOGGED_SEARCH],
            cwd=root,
            env={**os.environ, "OUT_DIR": str(out_dir), "PYTHONPATH": str(root)},
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=300,
            check=True,
        )
    text = log.read_text()
    assert "\r" not in text and "\x1b[A" not in text  # nothing redrawn
    lines = text.splitlines()
    starts = [line for line in lines if re.search(r"\] Trial \d+ started: ", line)]
    ends = [line for line in lines if re.search(r"\] Trial \d+ (COMPLETE|PRUNED|FAIL)", line)]
    assert [re.search(r"Trial (\d+)", line).group(1) for line in starts] == ["0", "1", "2", "3"]
    assert [re.search(r"Trial (\d+) (\w+)", line).groups() for line in ends] == [
        ("0", "COMPLETE"),
        ("1", "PRUNED"),
        ("2", "FAIL"),
        ("3", "PRUNED"),
    ]
    assert "learning_rate=" in starts[0] and "(8 steps, 64 samples planned)" in starts[0]
    assert re.search(r"Trial 0 COMPLETE: value 0.9 \| learning_rate=\S+ \| 64 samples, 8 steps, [\d.]+ s", ends[0])
    assert "Trial 1 PRUNED at step 2: last value 0.1 (at 16 samples)" in ends[1]
    assert "RuntimeError: metric failed for trial 2" in ends[2] and "1 failed" in ends[2]
    assert ends[3].endswith("| 3/3 done, 2 pruned, 1 failed, best 0.9 (trial 0)")
    # Optuna's own line per trial is held back (the end line says more); transformers' log dicts are not printed.
    assert "finished with value" not in text and "{'loss'" not in text and "{'eval_loss'" not in text
    # The end table and the page follow; the whole log stays short.
    assert "Optuna search" in text and "Best trial 0: value 0.9" in text and "report/index.html" in text
    # Besides the failed trial's traceback (Optuna's warning), 40 lines or fewer, settings and table included.
    assert len([line for line in lines if not line.startswith((" ", "Traceback", "RuntimeError"))]) <= 40, text
    assert len([line for line in lines if "optuna_trainer.output.progress]" in line]) == 1 + 4 + 4


def test_notebook_draws_widgets(monkeypatch):
    # In a Jupyter kernel tqdm.auto is tqdm.notebook's class: the bars are ipywidgets, drawn whatever stderr is.
    notebook = pytest.importorskip("tqdm.notebook")
    pytest.importorskip("ipywidgets")
    monkeypatch.setattr(progress_module, "tqdm", notebook.tqdm)
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: None)
    assert progress_module.in_notebook() and bars_wanted()
    study = optuna.create_study(direction="maximize")
    progress = TrialProgress(study, n_trials=2)
    try:
        assert isinstance(progress.bar, notebook.tqdm) and progress.bar.container is not None
        study.add_trial(_finished(TrialState.COMPLETE, 0.5))
        progress(study, study.trials[-1])
        assert progress.bar.n == 1 and "best=0.5" in str(progress.bar.postfix)
    finally:
        progress.close()


def test_end_lines_name_what_happened():
    study = optuna.create_study(direction="minimize")
    study.set_user_attr("optuna_trainer_pruning", {"budget": "steps", "metric": "eval_loss"})
    with capture_logs("optuna_trainer") as logs:
        progress = TrialProgress(study, n_trials=3, bars=False)
        for trial in (
            create_trial(
                state=TrialState.PRUNED,
                intermediate_values={2: 0.9, 4: 0.8},
                user_attrs={"pruned_at_step": 4, "steps": 4, "seconds": 2.04},
            ),
            create_trial(
                state=TrialState.PRUNED,
                user_attrs={"infeasible": "out_of_memory", "fail_reason": "OutOfMemoryError: CUDA out of memory"},
            ),
            create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "ValueError: bad"}),
        ):
            study.add_trial(trial)
            progress(study, study.trials[-1])
        progress.close()
    assert logs.messages[1:] == [
        "Trial 0 PRUNED at step 4: last value 0.8 (at step 4) | no parameters | 4 steps, 2.0 s | 1/3 done, 1 pruned, "
        "0 failed",
        "Trial 1 PRUNED: infeasible (out_of_memory): OutOfMemoryError: CUDA out of memory | no parameters | no training "
        "| 2/3 done, 2 pruned, 0 failed",
        "Trial 2 FAIL: ValueError: bad | no parameters | no training | 2/3 done, 2 pruned, 1 failed",
    ]
