"""`report/index.html`: the whole search on one page that opens offline, in any browser, with nothing installed.

The page holds the summary (best trial, counts per state, training run and saved by pruning, wall time, the resolved
settings), a sortable table of every trial with a link to its run folder, and Optuna's own plotly figures (made in
output/report.py). plotly.js is inlined once (about 3.5 MB: the page needs no network, in CI or on a laptop on a
train), the figures after it without their own copy. The table is sorted by a few lines of script of our own, so the
page needs no other library.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from typing import Any

PAGE_FILE = "index.html"

# The plot titles shown above each figure, in page order.
PLOT_TITLES = {
    "optimization_history": "Optimization history",
    "intermediate_values": "Intermediate values",
    "param_importances": "Parameter importances",
    "parallel_coordinate": "Parallel coordinates",
    "slice": "Slices",
    "pareto_front": "Pareto front",
}

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;
color:#222}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em} td,th{padding:.25em .6em;border-bottom:1px solid #eee;text-align:left}
th{background:#f5f5f5;position:sticky;top:0} #trials th{cursor:pointer;user-select:none}
#trials th[aria-sort=ascending]::after{content:" \\25B2"} #trials th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.COMPLETE td.state{color:#1a7f37} tr.PRUNED td.state{color:#9a6700} tr.FAIL td.state{color:#cf222e}
tr.best{background:#eef8ee} .facts td:first-child{color:#555} code{background:#f5f5f5;padding:0 .3em}
.plot{min-height:420px} .skipped{color:#777}
"""

# Click a header to sort by it (again to reverse); numbers compare as numbers, empty cells go last.
_SORT_SCRIPT = """
(function(){
  var table=document.getElementById("trials"); if(!table) return;
  var heads=table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads,function(th,col){
    th.addEventListener("click",function(){
      var asc=th.getAttribute("aria-sort")!=="ascending";
      Array.prototype.forEach.call(heads,function(h){h.removeAttribute("aria-sort");});
      th.setAttribute("aria-sort",asc?"ascending":"descending");
      var body=table.tBodies[0], rows=Array.prototype.slice.call(body.rows);
      function key(r){var c=r.cells[col];return c.hasAttribute("data-sort")?c.getAttribute("data-sort"):c.textContent;}
      rows.sort(function(a,b){
        var x=key(a),y=key(b); if(x===""&&y==="") return 0; if(x==="") return 1; if(y==="") return -1;
        var p=parseFloat(x),q=parseFloat(y),d=(!isNaN(p)&&!isNaN(q)&&isFinite(x)&&isFinite(y))?p-q:x.localeCompare(y);
        return asc?d:-d;
      });
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
})();
"""


def render_page(
    summary: dict[str, Any],
    columns: Sequence[str],
    rows: Sequence[dict[str, Any]],
    figures: dict[str, str],
    skipped: dict[str, str],
    plotly_js: str,
    report_dir: str,
    unit: str,
) -> str:
    """The page as one HTML string.

    Args:
        summary: what `summarize` returned, with `settings` and `dashboard` (output/report.py).
        columns, rows: the trials table (`trial_rows`).
        figures: plot name -> the figure's `<div>` and script (`plotly.io.to_html(..., full_html=False)`).
        skipped: plot name -> why it was not drawn.
        plotly_js: plotly.js itself, inlined once.
        report_dir: where the page goes; run folders are linked relative to it.
        unit: "samples" or "steps", what the trials' reported steps count (the intermediate values' x axis).
    """
    title = f"Optuna search {summary['study_name']}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{_STYLE}</style>",
        # plotly.js, once: every figure below uses it.
        f'<script type="text/javascript">{plotly_js}</script>',
        "</head><body>",
        f"<h1>{_e(title)}</h1>",
        _summary_section(summary, unit),
        _trials_section(columns, rows, summary, report_dir, unit),
        _plots_section(figures, skipped),
        _settings_section(summary),
        f"<script>{_SORT_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"  # to read; the cell's data-sort and trials.csv keep every digit
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return str(value)


def _seconds(value: Any) -> str:
    if value is None:
        return "n/a"
    value = float(value)
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min ({value:.0f} s)"


def _summary_section(summary: dict[str, Any], unit: str) -> str:
    facts: list[tuple[str, str]] = []
    best = summary.get("best_trial")
    if best is not None:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())
        facts.append(("Best trial", f"{best['number']}: value {_fmt(best['value'])} ({params})"))
    elif summary.get("best_trials"):
        facts.append(("Pareto front", "trials " + ", ".join(str(t["number"]) for t in summary["best_trials"])))
    else:
        facts.append(("Best trial", "no completed trial"))
    facts.append(("Directions", ", ".join(summary.get("directions", []))))
    facts.append(
        (
            "Trials",
            f"{summary['n_trials']}: " + ", ".join(f"{v} {k.lower()}" for k, v in summary.get("states", {}).items()),
        )
    )
    if summary.get("infeasible"):
        facts.append(("Infeasible", f"{summary['infeasible']} (out of memory: recorded pruned, with a constraint)"))
    if summary.get("total_samples"):
        facts.append(
            (
                "Training samples",
                f"{summary['total_samples']} seen, {summary['samples_saved_by_pruning']} saved by pruning",
            )
        )
    facts.append(
        ("Training steps", f"{summary['total_steps']} run, {summary['steps_saved_by_pruning']} saved by pruning")
    )
    facts.append(("Wall time", _seconds(summary.get("wall_time_seconds"))))
    facts.append(("Time in trials", _seconds(summary.get("trial_seconds"))))
    facts.append(("Intermediate values at", "training samples seen" if unit == "samples" else "optimizer steps"))
    if summary.get("dashboard"):
        facts.append(("Explore", f"<code>{_e(summary['dashboard'])}</code>"))
    body = "".join(
        f"<tr><td>{_e(k)}</td><td>{v if k == 'Explore' else _e(v)}</td></tr>" for k, v in facts
    )  # the dashboard command is escaped above, inside its <code>
    return f'<h2>Summary</h2><table class="facts" id="summary">{body}</table>'


def _trials_section(
    columns: Sequence[str], rows: Sequence[dict[str, Any]], summary: dict[str, Any], report_dir: str, unit: str
) -> str:
    best = summary.get("best_trial")
    best_numbers = {best["number"]} if best else {t["number"] for t in summary.get("best_trials") or []}
    values = [c for c in columns if c == "value" or c.startswith("value_")]
    params = [c for c in columns if c.startswith("params_")]
    # The training each trial got, in samples when the search counts in samples (a pruned trial's samples are where
    # it was cut short), and in optimizer steps; `pruned_at_step` is the optimizer step.
    amounts = ["samples", "steps"] if unit == "samples" else ["steps"]
    shown = ["number", "state", *values, *params, *amounts, "pruned_at_step", "seconds", "run_dir"]
    headers = {
        "number": "#",
        "state": "state",
        "samples": "samples",
        "steps": "steps",
        "pruned_at_step": "pruned at step",
        "seconds": "seconds",
        "run_dir": "run folder",
    }
    head = "".join(f"<th>{_e(headers.get(c, c.removeprefix('params_')))}</th>" for c in shown)
    body = []
    for row in rows:
        cells = []
        for column in shown:
            value = row.get(column)
            if column == "state":
                cells.append(f'<td class="state">{_e(value)}</td>')
            elif column == "run_dir":
                cells.append(f"<td>{_run_link(value, report_dir)}</td>")
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                cells.append(f'<td class="num" data-sort="{value!r}">{_e(_fmt(value))}</td>')
            else:
                cells.append(f"<td>{_e(_fmt(value))}</td>")
        fail = row.get("fail_reason")
        tip = f' title="{_e(fail)}"' if fail else ""
        classes = f"{row['state']}{' best' if row['number'] in best_numbers else ''}"
        body.append(
            f'<tr class="{classes}" data-number="{row["number"]}" data-state="{_e(row["state"])}"{tip}>'
            + "".join(cells)
            + "</tr>"
        )
    return (
        "<h2>Trials</h2><p>Click a column header to sort.</p>"
        f'<table id="trials"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


def _run_link(run_dir: Any, report_dir: str) -> str:
    if not run_dir:
        return ""
    # Relative, so that the link still works when the output folder is moved or copied elsewhere as a whole.
    target = os.path.relpath(os.path.abspath(str(run_dir)), os.path.abspath(report_dir))
    href = "/".join(target.split(os.sep)) + "/"
    return f'<a href="{_e(href)}">{_e(os.path.basename(os.path.normpath(str(run_dir))))}</a>'


def _plots_section(figures: dict[str, str], skipped: dict[str, str]) -> str:
    out = ["<h2>Plots</h2>"]
    for name, title in PLOT_TITLES.items():
        if name in figures:
            out.append(f'<h3>{_e(title)}</h3><div class="plot" id="section-{name}">{figures[name]}</div>')
        elif name in skipped:
            out.append(f'<h3>{_e(title)}</h3><p class="skipped">Not drawn: {_e(skipped[name])}</p>')
    if "all" in skipped:
        out.append(f'<p class="skipped">{_e(skipped["all"])}</p>')
    return "\n".join(out)


def _settings_section(summary: dict[str, Any]) -> str:
    settings = summary.get("settings")
    if not settings:
        return "<h2>Settings</h2><p>Not stored with this study.</p>"
    rows = "".join(
        f"<tr><td>{_e(k)}</td><td><code>{_e(v if isinstance(v, str) else json.dumps(v, default=str))}</code></td></tr>"
        for k, v in settings.items()
    )
    return f'<h2>Settings</h2><table class="facts" id="settings">{rows}</table>'


__all__ = ["PAGE_FILE", "PLOT_TITLES", "render_page"]
