"""The end-of-search report: a summary (JSON and a printed table), every trial as CSV, and Optuna's own plots.

`write_report(study, output_dir)` works on any Optuna study, during the run that made it or later from its storage
(`optuna-trainer report --storage ... --study-name ...`). It writes under `output_dir/report/`:

- `summary.json`: the best trial (number, value, parameters), counts per state, training steps run and steps saved by
  pruning, wall time, and the resolved search settings;
- `trials.csv`: one row per trial (number, state, value, parameters, steps, seconds, ...);
- `optimization_history`, `intermediate_values`, `param_importances`, `parallel_coordinate` and `slice` plots, as PNG
  through `optuna.visualization.matplotlib`;
- `index.html`: all of it on one page that opens offline (output/report_page.py), with the plots drawn by
  `optuna.visualization` (plotly) when plotly is installed.

The intermediate values are plotted against what the search reports them at: training samples seen (the default
`prune_budget="samples"`) or optimizer steps, and the x axis says which.

A plot that cannot be drawn (parameter importances need two completed trials and more than one parameter) is skipped
with its reason in the log and in `summary.json`; it never fails the search.
"""

from __future__ import annotations

import csv
import datetime
import functools
import html
import importlib.util
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from optuna_trainer._compat import storage_location, study_storage
from optuna_trainer.output.report_page import PAGE_FILE, render_page
from optuna_trainer.study.attrs import PRUNING_ATTR, SETTINGS_ATTR, read
from optuna_trainer.study.storage import mask_url

logger = logging.getLogger(__name__)

REPORT_DIR = "report"
SUMMARY_FILE = "summary.json"
TRIALS_FILE = "trials.csv"
STEPS_SAVED_DEFINITION = (
    "sum over pruned trials of (the trial's planned training steps, user attribute max_steps, minus the steps it ran)"
)
SAMPLES_SAVED_DEFINITION = (
    "sum over pruned trials of (the trial's planned training samples, user attribute max_samples = max_steps x "
    "samples per step, minus the samples it saw)"
)
# How many trials the printed table shows; the CSV always has them all.
MAX_PRINTED_TRIALS = 40


def write_report(
    study: optuna.Study,
    output_dir: str | os.PathLike,
    settings: Any = None,
    *,
    storage_url: str | None = None,
    plots: bool = True,
    print_summary: bool = True,
) -> dict[str, Any]:
    """Write the report of `study` under `output_dir/report/` and return the summary.

    Args:
        study: the study, live or loaded with `optuna.load_study`.
        output_dir: the search's output directory; the report goes to its `report/` folder.
        settings: the search's `SearchSettings` (its `describe()` is written and kept on the study for later reports).
        storage_url: the storage URL or journal file, for the `optuna-dashboard` command (read from the settings or
            the study's storage when not given). Passwords are masked wherever it is shown.
        plots: draw the plots (PNG, and on the page when plotly is installed); the page is written either way.
        print_summary: print the summary table to stdout.

    Returns:
        The summary written to `summary.json`.
    """
    report_dir = os.path.join(os.fspath(output_dir), REPORT_DIR)
    os.makedirs(report_dir, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    described = _settings(study, settings)
    dashboard = dashboard_command(storage_url or _storage_target(study, settings))

    summary = summarize(study, trials)
    summary["settings"] = described
    summary["dashboard"] = dashboard
    summary["files"] = {"summary": SUMMARY_FILE, "trials": TRIALS_FILE, "page": PAGE_FILE}
    write_trials_csv(trials, os.path.join(report_dir, TRIALS_FILE))
    _remove_stale(report_dir)
    figures: dict[str, str] = {}
    if plots:
        summary["plots"], summary["skipped_plots"] = write_plots(study, report_dir, figures=figures)
    with open(os.path.join(report_dir, SUMMARY_FILE), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, default=str)
    page = write_page(study, report_dir, summary, trials, figures)
    if print_summary:
        print(format_summary(summary, trials), flush=True)
    logger.info(f"Search report written to {page} (open it in a browser; the data files are next to it)")
    if dashboard is not None:
        logger.info(f"Explore the study: {dashboard}")
    else:
        logger.info(
            "The study was kept in memory only: give a storage (e.g. the default SQLite file) to open it in optuna-dashboard"
        )
    return summary


def _remove_stale(report_dir: str) -> None:
    """Remove what an earlier version wrote beside the page (one HTML file per plot and plotly.min.js), so that a
    report written again into the same folder does not show an older search's plots next to the new page."""
    for name in (*(f"{plot}.html" for plot in (*PLOTS, "pareto_front")), "plotly.min.js"):
        path = os.path.join(report_dir, name)
        if os.path.isfile(path):
            os.remove(path)


# ---- summary ---------------------------------------------------------------------------------------------------


def summarize(study: optuna.Study, trials: Sequence[FrozenTrial] | None = None) -> dict[str, Any]:
    """Counts, best trial(s), steps and time of a study, as plain data."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    multi = len(study.directions) > 1
    counts = {state.name: 0 for state in TrialState}
    for t in trials:
        counts[t.state.name] += 1
    total_steps = sum(int(read(t).get("steps") or 0) for t in trials)
    total_samples = sum(int(read(t).get("samples") or 0) for t in trials)
    saved = saved_by_pruning(trials, samples=False)
    saved_samples = saved_by_pruning(trials, samples=True)
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else None

    summary: dict[str, Any] = {
        "study_name": study.study_name,
        "directions": [d.name.lower() for d in study.directions],
        "n_trials": len(trials),
        "states": {k: v for k, v in counts.items() if v or k in ("COMPLETE", "PRUNED", "FAIL")},
        # Out of memory recorded infeasible (PRUNED with a constraint, training/faults.py): apart from failures.
        "infeasible": sum(1 for t in trials if read(t).get("infeasible")),
        "best_trial": None,
        "total_steps": total_steps,
        "steps_saved_by_pruning": saved,
        "steps_saved_by_pruning_definition": STEPS_SAVED_DEFINITION,
        "total_samples": total_samples,
        "samples_saved_by_pruning": saved_samples,
        "samples_saved_by_pruning_definition": SAMPLES_SAVED_DEFINITION,
        "wall_time_seconds": None if wall is None else round(wall, 3),
        "trial_seconds": round(sum(float(read(t).get("seconds") or 0.0) for t in trials), 3),
    }
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete and multi:
        summary["best_trials"] = [_trial_brief(t, multi) for t in study.best_trials]
    elif complete:
        summary["best_trial"] = _trial_brief(study.best_trial, multi)
    return summary


def saved_by_pruning(trials: Sequence[FrozenTrial], samples: bool) -> int:
    """Training (samples, or optimizer steps) the pruned trials did not run: planned minus ran, summed."""
    saved = 0
    for t in trials:
        attrs = read(t)
        planned, ran = (
            (attrs.get("max_samples"), attrs.get("samples"))
            if samples
            else (
                attrs.get("max_steps"),
                attrs.get("steps"),
            )
        )
        if t.state == TrialState.PRUNED and planned is not None and ran is not None:
            saved += max(int(planned) - int(ran), 0)
    return saved


def _trial_brief(trial: FrozenTrial, multi: bool) -> dict[str, Any]:
    brief = {
        "number": trial.number,
        "value": list(trial.values) if multi else trial.value,
        "params": dict(trial.params),
        "steps": read(trial).get("steps"),
        "run_dir": read(trial).get("run_dir"),
    }
    return brief


def _settings(study: optuna.Study, settings: Any) -> dict[str, Any] | None:
    """The resolved settings: from the search's `SearchSettings`, else as stored on the study by an earlier report."""
    if settings is None:
        return study.user_attrs.get(SETTINGS_ATTR)
    described = settings.describe() if hasattr(settings, "describe") else dict(settings)
    # Round-trip through JSON: storages keep user attributes as JSON, and the summary is JSON.
    described = json.loads(json.dumps(described, default=str))
    try:
        study.set_user_attr(SETTINGS_ATTR, described)
    except Exception as err:  # noqa: BLE001 - a read-only or unreachable storage must not lose the report
        logger.warning(f"Could not store the search settings on the study: {type(err).__name__}: {err}")
    return described


# ---- trials table ----------------------------------------------------------------------------------------------

# The trials' user attributes (study/attrs.py) the table shows, in its column order.
_ATTR_COLUMNS = ("steps", "max_steps", "pruned_at_step", "samples", "max_samples", "seconds", "run_dir", "fail_reason")
_FIXED_COLUMNS = (
    "number",
    "state",
    "value",
    "steps",
    "max_steps",
    "pruned_at_step",
    "samples",
    "max_samples",
    "seconds",
    "datetime_start",
    "datetime_complete",
    "run_dir",
    "fail_reason",
)


def trial_rows(trials: Sequence[FrozenTrial]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows of the trials table; parameters as `params_<name>`, several objectives as `value_<i>`."""
    param_names = sorted({name for t in trials for name in t.params})
    n_values = max((len(t.values) for t in trials if t.values is not None), default=1)
    value_columns = ["value"] if n_values <= 1 else [f"value_{i}" for i in range(n_values)]
    columns = ["number", "state", *value_columns, *(f"params_{p}" for p in param_names)]
    columns += [c for c in _FIXED_COLUMNS if c not in ("number", "state", "value")]
    rows = []
    for t in trials:
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        values = t.values or []
        for i, column in enumerate(value_columns):
            row[column] = values[i] if i < len(values) else None
        for p in param_names:
            row[f"params_{p}"] = t.params.get(p)
        attrs = read(t)
        for key in _ATTR_COLUMNS:
            row[key] = attrs.get(key)
        row["datetime_start"] = _iso(t.datetime_start)
        row["datetime_complete"] = _iso(t.datetime_complete)
        rows.append(row)
    return columns, rows


def write_trials_csv(trials: Sequence[FrozenTrial], path: str) -> None:
    columns, rows = trial_rows(trials)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def _iso(value: datetime.datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


# ---- plots -----------------------------------------------------------------------------------------------------


def _use_headless_backend() -> None:
    # Pick Agg unless the program already set up pyplot (a notebook, say): then its backend is the user's choice and
    # the report only closes the figures it made.
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib

        matplotlib.use("Agg")


PLOTS = ("optimization_history", "intermediate_values", "param_importances", "parallel_coordinate", "slice")


def _plot_names(multi: bool) -> tuple[str, ...]:
    # Optuna draws these for one objective; for several it needs a target per plot, so the Pareto front stands in.
    return ("pareto_front",) if multi else PLOTS


def _skip_reason(name: str, study: optuna.Study, complete: list[FrozenTrial]) -> str | None:
    """Why a plot cannot be drawn, checked up front so that the log says it plainly instead of an Optuna traceback."""
    params = {p for t in complete for p in t.params}
    if name != "intermediate_values" and not complete:
        return "no completed trial"
    if name == "param_importances":
        if len(complete) < 2:
            return f"needs at least 2 completed trials, the study has {len(complete)}"
        if len(params) < 2:
            return f"needs more than one searched parameter, the study has {sorted(params)}"
        varying = [p for p in params if len({repr(t.params.get(p)) for t in complete}) > 1]
        if not varying:
            return "every completed trial has the same parameter values"
    if name == "intermediate_values" and not any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        return "no trial reported intermediate values"
    if name in ("parallel_coordinate", "slice") and not params:
        return "the completed trials have no parameters"
    return None


def budget_unit(study: optuna.Study) -> str:
    """What the trials' intermediate values are reported at: "samples" (training samples seen) or "steps".

    The search records it on the study (search/compatibility.py); a study without it (made by Optuna alone, or before
    `prune_budget` existed) reported at optimizer steps, unless its trials say otherwise.
    """
    stored = study.user_attrs.get(PRUNING_ATTR)
    if isinstance(stored, dict) and stored.get("budget") in ("samples", "steps"):
        return str(stored["budget"])
    for trial in study.get_trials(deepcopy=False):
        attrs = read(trial)
        if "budget_per_step" in attrs and "samples_per_step" in attrs and attrs["samples_per_step"] != 1:
            return "samples" if attrs["budget_per_step"] == attrs["samples_per_step"] else "steps"
    return "steps"


def axis_title(unit: str) -> str:
    """The x axis of the intermediate values: what a reported step counts."""
    return "Training samples seen" if unit == "samples" else "Optimizer step"


def write_plots(
    study: optuna.Study, report_dir: str, figures: dict[str, str] | None = None
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Draw every plot that the study supports: a PNG file each and, when plotly is installed and `figures` is
    given, a plotly figure for the page (`figures[name]`: its `<div>` and script, without plotly.js).

    Returns:
        `(written, skipped)`: plot name -> file names, and plot name -> the reason it was not drawn.
    """
    written: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    multi = len(study.directions) > 1
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    have_matplotlib = importlib.util.find_spec("matplotlib") is not None
    have_plotly = importlib.util.find_spec("plotly") is not None
    if not have_matplotlib and not have_plotly:
        skipped["all"] = "neither matplotlib nor plotly is installed (pip install optuna-trainer[report])"
        logger.warning(f"No plots: {skipped['all']}")
        return written, skipped
    if have_matplotlib:
        _use_headless_backend()
    unit = budget_unit(study)
    for name in _plot_names(multi):
        function = f"plot_{name}"
        reason = _skip_reason(name, study, complete)
        if reason is not None:
            skipped[name] = reason
            logger.info(f"Plot {name} skipped: {reason}")
            continue
        files = []
        with warnings.catch_warnings():
            # The matplotlib backend of optuna.visualization is marked experimental; the warning says nothing useful
            # here.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # matplotlib's "identical low and high xlims" and the like, for a parameter all trials share: the plot is
            # drawn all the same, and the warning would be the only thing the search log says about it.
            warnings.simplefilter("ignore", UserWarning)
            if have_matplotlib:
                files += _try(name, skipped, functools.partial(_save_png, study, function, report_dir, name, unit))
            if have_plotly and figures is not None:
                for div in _try(name, skipped, functools.partial(_plotly_div, study, name, unit)):
                    figures[name] = div
        if files:
            written[name] = files
    return written, skipped


def _try(name: str, skipped: dict[str, str], draw: Callable[[], str]) -> list[str]:
    try:
        return [draw()]
    except Exception as err:  # noqa: BLE001 - a plot Optuna refuses (odd study) is reported, never fatal
        skipped[name] = f"{type(err).__name__}: {err}"
        logger.warning(f"Plot {name} skipped: {skipped[name]}")
        return []


def _save_png(study: optuna.Study, function: str, report_dir: str, name: str, unit: str) -> str:
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_matplotlib

    result = getattr(optuna_matplotlib, function)(study)
    first = next(iter(result.flat)) if hasattr(result, "flat") else result
    figure = first.figure
    if name == "intermediate_values":
        first.set_xlabel(axis_title(unit))  # Optuna labels it "Step" whatever the step counts
        _mark_pruned(study, first)
    width, height = figure.get_size_inches()
    figure.set_size_inches(max(width, 8), max(height, 5))
    path = os.path.join(report_dir, f"{name}.png")
    # bbox_inches="tight" rather than tight_layout(): the parallel-coordinate colorbar axes defeat tight_layout.
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return os.path.basename(path)


def _mark_pruned(study: optuna.Study, axes: Any) -> None:
    """Put an x at the last step of each pruned trial, so that trials cut short read as such without the legend."""
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    points = [
        (max(t.intermediate_values), t.intermediate_values[max(t.intermediate_values)])
        for t in pruned
        if t.intermediate_values
    ]
    points = [(s, v) for s, v in points if math.isfinite(v)]
    if points:
        axes.scatter([s for s, _ in points], [v for _, v in points], marker="x", color="red", s=60, zorder=5)
        axes.set_title(f"{axes.get_title()} (x: pruned here)")


def _pruned_points(study: optuna.Study) -> list[tuple[int, int, float]]:
    """(trial number, last reported step, value there) of each pruned trial: where it was cut short."""
    points = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
        if t.intermediate_values:
            step = max(t.intermediate_values)
            if math.isfinite(t.intermediate_values[step]):
                points.append((t.number, step, t.intermediate_values[step]))
    return points


def _plotly_div(study: optuna.Study, name: str, unit: str) -> str:
    """One of Optuna's plotly figures as a `<div>` for the page (plotly.js is on the page once, not in the div)."""
    import plotly.graph_objects as go
    import plotly.io as pio
    from optuna import visualization

    figure = getattr(visualization, f"plot_{name}")(study)
    if name == "intermediate_values":
        figure.update_xaxes(title_text=axis_title(unit))
        figure.update_layout(showlegend=True)  # which line is which trial, and what the red x is
        points = _pruned_points(study)
        if points:
            figure.add_trace(
                go.Scatter(
                    x=[s for _, s, _ in points],
                    y=[v for _, _, v in points],
                    mode="markers",
                    marker={"symbol": "x", "size": 11, "color": "red"},
                    name="pruned here",
                    text=[f"Trial {n} pruned" for n, _, _ in points],
                )
            )
    return pio.to_html(
        figure,
        full_html=False,
        include_plotlyjs=False,
        div_id=f"plot-{name}",
        config={"displaylogo": False, "responsive": True},
    )


def write_page(
    study: optuna.Study,
    report_dir: str,
    summary: dict[str, Any],
    trials: Sequence[FrozenTrial],
    figures: dict[str, str],
) -> str:
    """Write `index.html` (output/report_page.py) and return its path. Without plotly the page has no figures, and
    says so, but still holds the summary and the trials table."""
    skipped = dict(summary.get("skipped_plots") or {})
    plotly_js = ""
    if figures:
        import plotly.offline

        plotly_js = plotly.offline.get_plotlyjs()
    elif importlib.util.find_spec("plotly") is None and "plots" in summary:
        skipped["all"] = "plotly is not installed: the plots are the PNG files (pip install optuna-trainer[report])"
    columns, rows = trial_rows(trials)
    page = render_page(
        summary, columns, rows, figures, skipped, plotly_js, report_dir=report_dir, unit=budget_unit(study)
    )
    path = os.path.join(report_dir, PAGE_FILE)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path


def show_report(output_dir: str | os.PathLike, *, embed: bool = True, height: int = 900) -> Any:
    """Show the report page of the search in `output_dir` in a notebook cell, and return what was displayed.

    Args:
        output_dir: the search's output directory (the page is `output_dir/report/index.html`).
        embed: True: the page itself, inside the cell (an iframe whose `srcdoc` is the page): it needs no server and
            works offline in Jupyter, JupyterLab, VS Code and Colab, and the saved notebook keeps it (the page's size,
            about 5 MB with plotly.js). False: an `IPython.display.IFrame` pointing at the file, relative to the
            working directory: small, but the notebook server must serve the file (the output under the notebook's
            folder).
        height: the frame's height in pixels.

    Returns:
        The `IPython.display.HTML` or `IFrame` object, displayed when IPython runs the notebook.
    """
    from IPython.display import HTML, IFrame, display

    page = os.path.join(os.fspath(output_dir), REPORT_DIR, PAGE_FILE)
    if not os.path.isfile(page):
        raise FileNotFoundError(
            f"output_dir: no report page at {page}; it is written at the end of a search (search_report=True), or "
            "by `optuna-trainer report --storage ... --output-dir ...`"
        )
    shown: Any
    if embed:
        with open(page, encoding="utf-8") as f:
            srcdoc = html.escape(f.read(), quote=True)
        # In a <div>: IPython warns about an HTML object that is a bare <iframe> (it means a URL's IFrame).
        shown = HTML(
            f'<div><iframe srcdoc="{srcdoc}" width="100%" height="{int(height)}" style="border:1px solid #ddd" '
            'sandbox="allow-scripts allow-popups"></iframe></div>'
        )
    else:
        shown = IFrame(os.path.relpath(page), width="100%", height=int(height))
    display(shown)
    return shown


# ---- printed table and the dashboard command -------------------------------------------------------------------


def format_summary(summary: dict[str, Any], trials: Sequence[FrozenTrial]) -> str:
    """The summary as a plain-text table, as printed at the end of a search."""
    columns, rows = trial_rows(trials)
    shown = [c for c in columns if c.startswith(("number", "state", "value", "params_")) or c in ("steps", "seconds")]
    header = [c.removeprefix("params_") for c in shown]
    body = [[_fmt(row.get(c)) for c in shown] for row in rows[:MAX_PRINTED_TRIALS]]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    line = "  ".join("-" * w for w in widths)
    out = [
        f"Optuna search {summary['study_name']!r}: {summary['n_trials']} trials "
        + ", ".join(f"{v} {k.lower()}" for k, v in summary["states"].items())
        + (f" ({summary['infeasible']} of them infeasible: out of memory)" if summary.get("infeasible") else ""),
        line,
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
        line,
    ]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in body]
    if len(rows) > MAX_PRINTED_TRIALS:
        out.append(f"... {len(rows) - MAX_PRINTED_TRIALS} more trials in {TRIALS_FILE}")
    out.append(line)
    best = summary.get("best_trial")
    if best is not None:
        out.append(
            f"Best trial {best['number']}: value {_fmt(best['value'])}, params "
            + ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())
        )
    elif summary.get("best_trials"):
        out.append(f"Pareto front: trials {[t['number'] for t in summary['best_trials']]}")
    else:
        out.append("No completed trial")
    wall = summary.get("wall_time_seconds")
    samples = ""
    if summary.get("total_samples"):
        samples = (
            f"Training samples: {summary['total_samples']} seen, {summary['samples_saved_by_pruning']} saved by "
            "pruning; "
        )
    out.append(
        f"{samples}Training steps: {summary['total_steps']} run, {summary['steps_saved_by_pruning']} saved by "
        f"pruning; wall time {'n/a' if wall is None else f'{wall:.1f} s'}"
    )
    return "\n".join(out)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return str(value)


def _storage_target(study: optuna.Study, settings: Any) -> str | None:
    """What optuna-dashboard is given for this study: the storage URL or the journal file, or None (in memory)."""
    # The storage the search opened knows what the dashboard opens (search/settings.py: StorageSettings.target).
    opened = getattr(settings, "storage", None)
    if opened is not None and opened.target:
        return str(opened.target)
    if opened is not None and opened.storage is None:
        return None  # in memory: nothing to open
    # A study loaded without the search's settings (optuna-trainer report), or a storage object the user built.
    return storage_location(study_storage(study))


def dashboard_command(storage: str | None) -> str | None:
    """The shell command that opens optuna-dashboard on `storage`, its password masked; None for an in-memory study."""
    if not storage:
        return None
    return f"optuna-dashboard {mask_url(storage)}"


__all__ = [
    "PAGE_FILE",
    "REPORT_DIR",
    "SUMMARY_FILE",
    "TRIALS_FILE",
    "axis_title",
    "budget_unit",
    "dashboard_command",
    "format_summary",
    "show_report",
    "summarize",
    "trial_rows",
    "write_page",
    "write_plots",
    "write_report",
    "write_trials_csv",
]
