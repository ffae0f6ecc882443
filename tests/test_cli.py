"""`optuna-trainer report`: the report of a stored study, without re-running it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import tomllib
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from optuna_trainer.cli import main
from optuna_trainer.output.report import REPORT_DIR, SETTINGS_ATTR, SUMMARY_FILE, TRIALS_FILE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def stored(tmp_path) -> str:
    """An SQLite study of 3 trials (complete 0.6, pruned, complete 0.8) with settings a search stored on it."""
    url = f"sqlite:///{tmp_path}/study.db"
    study = optuna.create_study(storage=url, study_name="stored", direction="maximize")
    dist = {"learning_rate": FloatDistribution(1e-5, 1e-3, log=True), "weight_decay": FloatDistribution(0.0, 0.1)}
    for i, (state, value) in enumerate(
        [(TrialState.COMPLETE, 0.6), (TrialState.PRUNED, None), (TrialState.COMPLETE, 0.8)]
    ):
        study.add_trial(
            create_trial(
                state=state,
                value=value,
                params={"learning_rate": 1e-4 * (i + 1), "weight_decay": 0.02 * (i + 1)},
                distributions=dist,
                intermediate_values={2: 0.5 + 0.1 * i, 4: 0.55 + 0.1 * i} if value else {2: 0.4},
                user_attrs={"steps": 4 if value else 2, "max_steps": 4, "seconds": 1.0},
            )
        )
    study.set_user_attr(SETTINGS_ATTR, {"sampler": "TPESampler", "pruner": "MedianPruner"})
    return url


def test_report_from_storage(stored, tmp_path, capsys):
    out = tmp_path / "report_out"
    assert main(["report", "--storage", stored, "--study-name", "stored", "--output-dir", str(out)]) == 0
    summary = json.loads((out / REPORT_DIR / SUMMARY_FILE).read_text())
    assert summary["best_trial"]["number"] == 2 and summary["best_trial"]["value"] == 0.8
    assert summary["states"] == {"COMPLETE": 2, "PRUNED": 1, "FAIL": 0}
    assert summary["steps_saved_by_pruning"] == 2
    assert summary["settings"] == {"sampler": "TPESampler", "pruner": "MedianPruner"}
    assert summary["dashboard"] == f"optuna-dashboard {stored}"
    with open(out / REPORT_DIR / TRIALS_FILE, newline="") as f:
        assert [r["state"] for r in csv.DictReader(f)] == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert (out / REPORT_DIR / "optimization_history.png").stat().st_size > 1000
    assert "Best trial 2: value 0.8" in capsys.readouterr().out


def test_single_study_needs_no_name_and_plots_can_be_skipped(stored, tmp_path):
    out = tmp_path / "o"
    assert main(["report", "--storage", stored, "--output_dir", str(out), "--no_plots"]) == 0
    # The page without its figures (tests/output/test_report_page.py), the JSON and the CSV; no plot files.
    assert sorted(p.name for p in (out / REPORT_DIR).iterdir()) == sorted(["index.html", SUMMARY_FILE, TRIALS_FILE])


def test_errors_name_what_exists(stored, tmp_path):
    with pytest.raises(SystemExit, match=r"no study 'nope' in .*it holds \['stored'\]"):
        main(["report", "--storage", stored, "--study-name", "nope", "--output-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="no SQLite file"):
        main(["report", "--storage", f"sqlite:///{tmp_path}/missing.db", "--output-dir", str(tmp_path)])
    assert not (tmp_path / "missing.db").exists()
    assert main(["frobnicate"]) == 2


@pytest.mark.processes
def test_console_script_declared_and_runs(stored, tmp_path):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["optuna-trainer"] == "optuna_trainer.cli:main"
    # What the console script runs, in a fresh interpreter as a user would.
    out = tmp_path / "sub"
    code = "import sys; from optuna_trainer.cli import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", code, "report", "--storage", stored, "--output-dir", str(out), "--no_plots"],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert (out / REPORT_DIR / SUMMARY_FILE).is_file()
    assert f"optuna-dashboard {stored}" in result.stderr
