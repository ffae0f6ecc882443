"""report/index.html: one self-contained page of a search, checked as HTML and in a real headless Chromium."""

from __future__ import annotations

import html
import io
import os
import re
import shutil

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from optuna_trainer.output.report import REPORT_DIR, budget_unit, show_report, write_report
from optuna_trainer.output.report_page import PAGE_FILE
from optuna_trainer.study.attrs import PRUNING_ATTR
from tests.support import base_args, make_dataset, tiny_model

PLOTS = ("optimization_history", "intermediate_values", "param_importances", "parallel_coordinate", "slice")
SPACE = {"x": FloatDistribution(0.0, 1.0), "y": FloatDistribution(0.0, 1.0)}


def _study(budget: str = "samples") -> optuna.Study:
    """4 trials: complete, pruned (reported at 8 and 16 samples), complete (the best), failed."""
    s = optuna.create_study(direction="maximize", study_name="page <&> test")
    s.set_user_attr(PRUNING_ATTR, {"budget": budget, "metric": "eval_accuracy"})
    for number, (state, value) in enumerate(
        [(TrialState.COMPLETE, 0.6), (TrialState.PRUNED, None), (TrialState.COMPLETE, 0.8), (TrialState.FAIL, None)]
    ):
        s.add_trial(
            create_trial(
                state=state,
                value=value,
                params={"x": 0.1 + 0.2 * number, "y": 0.9 - 0.25 * number},
                distributions=SPACE,
                intermediate_values={} if state == TrialState.FAIL else {8: 0.5, 16: 0.4 + 0.1 * number},
                user_attrs={
                    "steps": 2 if state == TrialState.PRUNED else 4,
                    "max_steps": 4,
                    "samples": 16 if state == TrialState.PRUNED else 32,
                    "max_samples": 32,
                    "seconds": 1.0 + number,
                    "run_dir": f"/somewhere/out/run-{number}",
                    **({"pruned_at_step": 2} if state == TrialState.PRUNED else {}),
                    **({"fail_reason": "RuntimeError: <boom>"} if state == TrialState.FAIL else {}),
                },
            )
        )
    return s


def _page(tmp_path, study: optuna.Study, **kwargs) -> str:
    write_report(study, tmp_path, print_summary=False, **kwargs)
    return (tmp_path / REPORT_DIR / PAGE_FILE).read_text(encoding="utf-8")


class TestPage:
    def test_table_summary_and_plots(self, tmp_path):
        page = _page(tmp_path, _study())
        rows = re.findall(r'<tr class="([A-Z]+)[^"]*" data-number="(\d+)" data-state="([A-Z]+)"', page)
        assert [(n, s) for _, n, s in rows] == [("0", "COMPLETE"), ("1", "PRUNED"), ("2", "COMPLETE"), ("3", "FAIL")]
        assert '<tr class="COMPLETE best" data-number="2"' in page
        # Run folders are linked relative to the page, so that the output folder can be moved as a whole.
        expected = os.path.relpath("/somewhere/out/run-1", os.path.abspath(tmp_path / REPORT_DIR)).replace(os.sep, "/")
        assert f'href="{expected}/"' in page
        # The summary: best trial, counts, training run and saved by pruning.
        assert "2: value 0.8" in page and "2 complete, 1 pruned, 1 fail" in page
        assert "112 seen, 16 saved by pruning" in page and "14 run, 2 saved by pruning" in page
        for name in PLOTS:
            assert f'id="plot-{name}"' in page
        # plotly.js once, inline: nothing is fetched (no <script src=...>), each figure without a copy of its own.
        assert page.count("plotly.js v") == 1 and "<script src" not in page
        # What the study wrote is shown escaped, never as markup.
        assert "page &lt;&amp;&gt; test" in page and "RuntimeError: &lt;boom&gt;" in page

    @pytest.mark.parametrize(("budget", "title"), [("samples", "Training samples seen"), ("steps", "Optimizer step")])
    def test_intermediate_values_axis_in_the_search_units(self, tmp_path, budget, title):
        page = _page(tmp_path, _study(budget))
        div = page[page.index('id="plot-intermediate_values"') :]
        div = div[: div.index("</script>")]
        assert f'"title":{{"text":"{title}"}}' in div
        assert '"name":"pruned here"' in div  # a red x where the pruned trial was cut short

    def test_png_axis_label(self, tmp_path, monkeypatch):
        import matplotlib.axes

        labels = []
        original = matplotlib.axes.Axes.set_xlabel

        def spy(self, label, *args, **kwargs):
            labels.append(label)
            return original(self, label, *args, **kwargs)

        monkeypatch.setattr(matplotlib.axes.Axes, "set_xlabel", spy)
        write_report(_study("samples"), tmp_path, print_summary=False)
        assert "Training samples seen" in labels

    def test_unit_without_the_study_attribute(self):
        s = optuna.create_study()
        assert budget_unit(s) == "steps"  # a study made by Optuna alone reports at steps
        s.add_trial(create_trial(value=1.0, user_attrs={"samples_per_step": 8, "budget_per_step": 8}))
        assert budget_unit(s) == "samples"

    def test_several_objectives_show_the_pareto_front(self, tmp_path):
        s = optuna.create_study(directions=["minimize", "maximize"])
        for values in [(0.5, 0.7), (0.4, 0.6), (0.6, 0.9)]:
            s.add_trial(create_trial(values=list(values), params={"x": values[0]}, distributions={"x": SPACE["x"]}))
        page = _page(tmp_path, s)
        assert 'id="plot-pareto_front"' in page and "Pareto front" in page and 'id="plot-slice"' not in page
        assert "<th>value_0</th>" in page and "<th>value_1</th>" in page

    def test_no_plots_still_writes_the_page(self, tmp_path):
        page = _page(tmp_path, _study(), plots=False)
        assert 'id="trials"' in page and "plotly.js v" not in page and len(page) < 100_000


# ---- in a real browser ---------------------------------------------------------------------------------------


def _browser():
    """Headless Chromium through selenium and Debian's chromedriver; skip (or fail under
    OPTUNA_TRAINER_REQUIRE_SERVICES=1) with the reason where there is none."""
    reason = None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        reason = "selenium is not installed (pip install -e '.[dev]')"
    binary = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )
    driver = shutil.which("chromedriver")
    if reason is None and (binary is None or driver is None):
        reason = "no Chromium and chromedriver on PATH (apt-get install chromium chromium-driver)"
    if reason is not None:
        if os.environ.get("OPTUNA_TRAINER_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason}, and OPTUNA_TRAINER_REQUIRE_SERVICES=1 requires it")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI containers run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        # Offline: any request to a host fails (and shows as a console error), so the page must hold everything.
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver is given by path: selenium's own manager would otherwise try to download one.
    return webdriver.Chrome(service=Service(driver), options=options)


def _search(out_dir) -> optuna.Study:
    """A real search: trial 0 completes, 1 fails before training, 2 is pruned at its first evaluation, 3 completes."""
    trainer = None
    accuracy = {"run-0": 0.7, "run-3": 0.9}

    def metrics(pred):
        return {"accuracy": accuracy.get(os.path.basename(trainer.args.output_dir), 0.1)}

    def model_init(trial=None):
        if trainer is not None and trainer.args.output_dir.endswith("run-1"):
            raise RuntimeError("no model for trial 1")
        return tiny_model()

    trainer = OptunaTrainer(
        model_init=model_init,
        args=OptunaTrainingArguments(
            **base_args(
                out_dir,
                n_trials=3,
                hp_space={
                    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
                },
                pruner={"name": "threshold", "lower": 0.5},
                save_best_model=False,
            )
        ),
        train_dataset=make_dataset(32),
        eval_dataset=make_dataset(16, seed=1),
        compute_metrics=metrics,
    )
    trainer.hyperparameter_search(catch=(RuntimeError,))
    assert trainer.study is not None
    return trainer.study


def distinct_colours(png: bytes) -> int:
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    return len(np.unique(pixels, axis=0))


@pytest.mark.slow  # about 20 s on 2 shared cores: a search of 4 trials, then the browser
def test_page_of_a_real_search_in_chromium(out_dir):
    browser = _browser()
    try:
        study = _search(out_dir)
        states = [t.state.name for t in study.trials]
        assert states == ["COMPLETE", "FAIL", "PRUNED", "COMPLETE"]
        page = out_dir / REPORT_DIR / PAGE_FILE
        browser.get(page.as_uri())
        browser.implicitly_wait(10)

        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        # Nothing was fetched: every script and style is on the page.
        assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0

        rows = browser.execute_script(
            "return Array.from(document.querySelectorAll('#trials tbody tr'))"
            ".map(r => [Number(r.dataset.number), r.querySelector('td.state').textContent])"
        )
        assert rows == [[t.number, t.state.name] for t in study.trials]

        for name in PLOTS:
            element = browser.find_element("id", f"plot-{name}")
            assert element.size["height"] > 200 and element.size["width"] > 400, name
            # plotly drew into it: its SVG layers exist, with data traces.
            assert element.find_elements("css selector", ".main-svg"), name
            assert browser.execute_script(f"return document.getElementById('plot-{name}').data.length") >= 1, name
            # And the picture is not blank: a drawn plot has axes, lines and markers in many colours.
            assert distinct_colours(element.screenshot_as_png) > 50, name

        # The header sorts: by value, descending on the second click; the best trial first.
        header = browser.find_element("xpath", "//table[@id='trials']//th[text()='value']")
        header.click()
        header.click()
        first = browser.execute_script("return document.querySelector('#trials tbody tr').dataset.number")
        assert int(first) == study.best_trial.number
    finally:
        browser.quit()


# ---- in a notebook -------------------------------------------------------------------------------------------


class TestShowReport:
    def test_embeds_the_page(self, tmp_path, monkeypatch):
        display = pytest.importorskip("IPython.display")
        shown = []
        monkeypatch.setattr(display, "display", lambda obj: shown.append(obj))
        write_report(_study(), tmp_path, print_summary=False, plots=False)
        result = show_report(tmp_path, height=700)
        assert shown == [result] and isinstance(result, display.HTML)
        frame = result._repr_html_()
        # The page itself is the frame's document, escaped into its srcdoc attribute: no server, no file access.
        assert frame.startswith("<div><iframe srcdoc=") and 'height="700"' in frame
        page = (tmp_path / REPORT_DIR / PAGE_FILE).read_text(encoding="utf-8")
        assert html.unescape(frame.split('srcdoc="', 1)[1].split('" width=', 1)[0]) == page

    def test_links_the_file(self, tmp_path, monkeypatch):
        display = pytest.importorskip("IPython.display")
        monkeypatch.setattr(display, "display", lambda obj: None)
        write_report(_study(), tmp_path, print_summary=False, plots=False)
        monkeypatch.chdir(tmp_path)
        result = show_report(tmp_path, embed=False)
        assert isinstance(result, display.IFrame) and result.src == os.path.join(REPORT_DIR, PAGE_FILE)
        assert 'src="report/index.html"' in result._repr_html_()

    def test_no_page_says_how_to_make_one(self, tmp_path):
        pytest.importorskip("IPython.display")
        with pytest.raises(FileNotFoundError, match=r"output_dir: no report page at .*optuna-trainer report"):
            show_report(tmp_path)
