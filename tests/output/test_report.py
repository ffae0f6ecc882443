"""The end-of-search report: summary values, one CSV row per trial, plots that decode and are not blank."""

from __future__ import annotations

import csv
import json
import logging
import os

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from optuna_trainer.output.report import (
    REPORT_DIR,
    SETTINGS_ATTR,
    SUMMARY_FILE,
    TRIALS_FILE,
    dashboard_command,
    summarize,
    write_report,
)
from tests.support import base_args, compute_metrics, make_dataset, tiny_model

PLOTS = ("optimization_history", "intermediate_values", "param_importances", "parallel_coordinate", "slice")
DISTRIBUTIONS = {
    "learning_rate": FloatDistribution(1e-5, 1e-3, log=True),
    "per_device_train_batch_size": CategoricalDistribution([8, 16]),
}


def _trial(state: TrialState, number_hint: int, value: float | None, steps: int, max_steps: int = 10):
    curve = {s: 0.5 + 0.04 * s + 0.01 * number_hint for s in range(2, steps + 1, 2)}
    return create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        params={
            "learning_rate": 10 ** (-5 + number_hint * 0.4),
            "per_device_train_batch_size": 8 << (number_hint % 2),
        },
        distributions=DISTRIBUTIONS,
        intermediate_values=curve if state != TrialState.FAIL else {},
        user_attrs={"steps": steps, "max_steps": max_steps, "seconds": 1.5},
    )


@pytest.fixture
def study() -> optuna.Study:
    """5 trials: 3 complete (best is #3, 0.9), 1 pruned at step 4 of 10, 1 failed at step 2."""
    s = optuna.create_study(direction="maximize", study_name="handmade")
    s.add_trial(_trial(TrialState.COMPLETE, 0, 0.7, 10))
    s.add_trial(_trial(TrialState.PRUNED, 1, None, 4))
    s.add_trial(_trial(TrialState.COMPLETE, 2, 0.8, 10))
    s.add_trial(_trial(TrialState.COMPLETE, 3, 0.9, 10))
    s.add_trial(_trial(TrialState.FAIL, 4, None, 2))
    return s


def assert_png_not_blank(path: str) -> None:
    import matplotlib.image

    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100, (path, pixels.shape)
    assert float(np.var(pixels)) > 0.0, f"{path} is blank"


class TestSummary:
    def test_values(self, study):
        summary = summarize(study)
        assert summary["states"] == {"COMPLETE": 3, "PRUNED": 1, "FAIL": 1}
        assert summary["best_trial"]["number"] == 3
        assert summary["best_trial"]["value"] == 0.9
        assert set(summary["best_trial"]["params"]) == set(DISTRIBUTIONS)
        assert summary["total_steps"] == 10 + 4 + 10 + 10 + 2
        # Only the pruned trial counts: planned 10, ran 4. The failed trial stopped for another reason.
        assert summary["steps_saved_by_pruning"] == 6
        assert summary["trial_seconds"] == pytest.approx(7.5)

    def test_no_completed_trial(self):
        s = optuna.create_study(direction="maximize")
        s.add_trial(_trial(TrialState.PRUNED, 0, None, 4))
        summary = summarize(s)
        assert summary["best_trial"] is None and summary["states"]["PRUNED"] == 1


class TestWriteReport:
    def test_files(self, study, tmp_path, capsys):
        summary = write_report(study, tmp_path, storage_url="sqlite:///x.db")
        report = tmp_path / REPORT_DIR

        on_disk = json.loads((report / SUMMARY_FILE).read_text())
        assert on_disk["best_trial"]["number"] == 3 and on_disk["steps_saved_by_pruning"] == 6
        assert on_disk["dashboard"] == "optuna-dashboard sqlite:///x.db"
        assert summary["states"] == on_disk["states"]

        with open(report / TRIALS_FILE, newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["number"] for r in rows] == ["0", "1", "2", "3", "4"]
        assert [r["state"] for r in rows] == ["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE", "FAIL"]
        assert [r["value"] for r in rows] == ["0.7", "", "0.8", "0.9", ""]
        assert {"params_learning_rate", "params_per_device_train_batch_size", "steps", "seconds"} <= set(rows[0])
        assert rows[1]["steps"] == "4" and rows[1]["max_steps"] == "10"

        page = (report / "index.html").read_text()
        for name in PLOTS:
            assert_png_not_blank(str(report / f"{name}.png"))
            assert f'id="plot-{name}"' in page  # every plot on the one page (tests/output/test_report_page.py)
        # One page instead of an HTML file per plot and plotly.min.js beside them.
        assert not any(f.endswith((".html", ".js")) and f != "index.html" for f in os.listdir(report))
        assert summary["skipped_plots"] == {}

        printed = capsys.readouterr().out
        assert "Best trial 3: value 0.9" in printed
        assert "PRUNED" in printed and "FAIL" in printed
        assert "6 saved by pruning" in printed

    def test_png_only_without_plotly(self, study, tmp_path, monkeypatch):
        import importlib.util

        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "plotly" else real(name, *a))
        write_report(study, tmp_path, print_summary=False)
        files = set(os.listdir(tmp_path / REPORT_DIR))
        assert "optimization_history.png" in files
        # The page is still written, with the summary and the table, and says why it has no figures.
        page = (tmp_path / REPORT_DIR / "index.html").read_text()
        assert "plotly is not installed" in page and 'id="trials"' in page and "Plotly.newPlot" not in page

    def test_importances_need_two_trials_and_two_params(self, tmp_path, caplog):
        s = optuna.create_study(direction="maximize")
        s.add_trial(_trial(TrialState.COMPLETE, 0, 0.7, 10))
        with caplog.at_level(logging.INFO, logger="optuna_trainer"):
            summary = write_report(s, tmp_path, print_summary=False)
        assert "2 completed trials" in summary["skipped_plots"]["param_importances"]
        assert "param_importances skipped" in caplog.text
        assert not (tmp_path / REPORT_DIR / "param_importances.png").exists()
        assert_png_not_blank(str(tmp_path / REPORT_DIR / "optimization_history.png"))

        one_param = optuna.create_study(direction="maximize")
        for i, value in enumerate((0.6, 0.7)):
            one_param.add_trial(
                create_trial(
                    value=value,
                    params={"learning_rate": 1e-4 * (i + 1)},
                    distributions={"learning_rate": DISTRIBUTIONS["learning_rate"]},
                )
            )
        summary = write_report(one_param, tmp_path / "one", print_summary=False)
        assert "more than one searched parameter" in summary["skipped_plots"]["param_importances"]

    def test_settings_kept_on_the_study(self, study, tmp_path):
        class Settings:
            def describe(self):
                return {"sampler": "TPESampler", "n_trials": 5}

        write_report(study, tmp_path, settings=Settings(), plots=False, print_summary=False)
        assert study.user_attrs[SETTINGS_ATTR] == {"sampler": "TPESampler", "n_trials": 5}
        # A later report without settings (the CLI) reads them back from the study.
        summary = write_report(study, tmp_path / "later", plots=False, print_summary=False)
        assert summary["settings"] == {"sampler": "TPESampler", "n_trials": 5}


def test_dashboard_command_masks_password():
    command = dashboard_command("postgresql+psycopg://alice:s3cret@db.example:5432/optuna")
    assert command == "optuna-dashboard postgresql+psycopg://alice:***@db.example:5432/optuna"
    assert dashboard_command(None) is None


class PruneTrialOne(optuna.pruners.BasePruner):
    """Prunes trial 1 at its first report and nothing else: a search whose states are known in advance."""

    def prune(self, study, trial):
        return trial.number == 1


class TestSearchWritesReport:
    def _search(self, out_dir, **overrides):
        values = base_args(
            out_dir,
            storage=f"sqlite:///{out_dir}/study.db",
            pruner=PruneTrialOne(),
            hp_space={
                "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
            },
            metric_for_best_model="accuracy",
            save_best_model=False,
        )
        values.update(overrides)
        trainer = OptunaTrainer(
            model_init=tiny_model,
            args=OptunaTrainingArguments(**values),
            train_dataset=make_dataset(32),
            eval_dataset=make_dataset(16, seed=1),
            compute_metrics=compute_metrics,
        )
        trainer.hyperparameter_search()
        return trainer

    def test_report_at_the_end(self, out_dir, capsys, caplog):
        with caplog.at_level(logging.INFO, logger="optuna_trainer"):
            trainer = self._search(out_dir)
        report = out_dir / REPORT_DIR
        with open(report / TRIALS_FILE, newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["state"] for r in rows] == ["COMPLETE", "PRUNED", "COMPLETE"]
        summary = json.loads((report / SUMMARY_FILE).read_text())
        assert summary["states"] == {"COMPLETE": 2, "PRUNED": 1, "FAIL": 0}
        # max_steps=8, evaluated every 2 steps: trial 1 is pruned at step 2 and saves 6 steps.
        assert rows[1]["steps"] == "2" and rows[1]["max_steps"] == "8"
        assert summary["steps_saved_by_pruning"] == 6 and summary["total_steps"] == 8 + 2 + 8
        assert summary["best_trial"]["number"] == trainer.study.best_trial.number
        assert summary["settings"]["study_name"] == trainer.study.study_name
        assert summary["settings"]["pruner"] == "PruneTrialOne"
        for name in PLOTS:
            assert_png_not_blank(str(report / f"{name}.png"))
        assert "Best trial" in capsys.readouterr().out
        # The log ends with the dashboard command for this study's storage.
        last = [r.getMessage() for r in caplog.records if r.name.startswith("optuna_trainer")][-1]
        assert last == f"Explore the study: optuna-dashboard sqlite:///{out_dir}/study.db"

    def test_turned_off(self, out_dir, capsys):
        self._search(out_dir, search_report=False)
        assert not (out_dir / REPORT_DIR).exists()
        assert "Best trial" not in capsys.readouterr().out

    def test_search_report_must_be_bool(self, out_dir):
        with pytest.raises(ValueError, match="search_report"):
            OptunaTrainingArguments(**base_args(out_dir, search_report="yes"))


def test_several_objectives(tmp_path):
    s = optuna.create_study(directions=["minimize", "maximize"])
    for i, values in enumerate([(0.5, 0.7), (0.4, 0.6), (0.6, 0.9)]):
        s.add_trial(
            create_trial(
                values=list(values),
                params={"learning_rate": 1e-4 * (i + 1)},
                distributions={"learning_rate": DISTRIBUTIONS["learning_rate"]},
            )
        )
    summary = write_report(s, tmp_path, print_summary=False)
    assert summary["best_trial"] is None
    assert sorted(t["number"] for t in summary["best_trials"]) == [0, 1, 2]  # none dominates another
    assert_png_not_blank(str(tmp_path / REPORT_DIR / "pareto_front.png"))
    with open(tmp_path / REPORT_DIR / TRIALS_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["value_0"], r["value_1"]) for r in rows] == [("0.5", "0.7"), ("0.4", "0.6"), ("0.6", "0.9")]
