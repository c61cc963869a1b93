"""The plot pages in a real browser: headless Chromium driven by Selenium.

Each page written by ``obsdb lc --plot`` (and ``obsdb period --plot``, ``obsdb
night-report``) is opened from a file; the test waits for plotly to draw, then checks the
rendered SVG (one trace per filter, the marker kinds), that nothing was fetched from the
network, and that the browser console holds no error. Skipped only when no Chromium
binary exists (``.ci/install-chromium`` installs Debian's chromium and chromium-driver).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lightcurve_data import lc_database  # noqa: F401  (session fixture: the filled database)
from test_lightcurves import invoke

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).exists()), None)
CHROMEDRIVER = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver",
                                 "/usr/lib/chromium/chromedriver") if p and Path(p).exists()), None)

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary (run .ci/install-chromium: "
                                                         "apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMEDRIVER is None:
        pytest.fail(f"Chromium is at {CHROMIUM} but chromedriver is missing: apt-get install chromium-driver "
                    "(.ci/install-chromium)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def open_page(driver, path: Path, n_plots: int = 1) -> dict:
    """Load a page, wait until plotly has drawn, return what the browser shows and logged."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(path.resolve().as_uri())
    WebDriverWait(driver, 60).until(lambda d: d.execute_script(
        "const g = document.querySelectorAll('.js-plotly-plot');"
        "return g.length >= arguments[0] && Array.from(g).every(x => x._fullLayout && "
        "x.querySelector('.scatterlayer'));", n_plots))
    shown = driver.execute_script("""
        const gd = document.querySelector('.js-plotly-plot');
        return {
          traces: document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length,
          names: gd.data.map(t => t.name),
          symbols: gd.data.map(t => !t.marker ? [] : Array.isArray(t.marker.symbol) ? t.marker.symbol : [t.marker.symbol]),
          points: gd.calcdata.map(c => c.length),
          drawn: Array.from(document.querySelectorAll('.js-plotly-plot .scatterlayer .trace'))
                      .map(t => t.querySelectorAll('.point').length),
          xrange: gd._fullLayout.xaxis.range,
          resources: performance.getEntriesByType('resource').map(e => e.name),
          title: gd._fullLayout.title.text,
        };""")
    shown["log"] = driver.get_log("browser")
    return shown


def assert_clean(shown: dict) -> None:
    errors = [entry for entry in shown["log"] if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors
    remote = [r for r in shown["resources"] if not r.startswith(("file:", "data:", "blob:"))]
    assert remote == [], f"the page fetched {remote}"


def test_lightcurve_plot_has_one_trace_per_filter(browser, lc_database, tmp_path):
    url, truth = lc_database
    page = tmp_path / "var.html"
    result = invoke(url, "lc", "--source-id", truth.variable, "--plot", page, "--format", "csv")
    assert result.exit_code == 0, result.output
    shown = open_page(browser, page)
    assert_clean(shown)
    assert shown["traces"] == 2 and sorted(shown["names"]) == ["R", "V"]
    assert sum(shown["points"]) == len(truth.frames) == sum(shown["drawn"])
    assert f"source {truth.variable}" in shown["title"]


def test_flagged_points_and_upper_limits_are_drawn_distinctly(browser, lc_database, tmp_path):
    url, truth = lc_database
    flagged, limits = tmp_path / "flagged.html", tmp_path / "limits.html"
    invoke(url, "lc", "--source-id", truth.flagged_star, "--include-flagged", "--plot", flagged, "--output",
           tmp_path / "f.csv")
    invoke(url, "lc", "--target", truth.target_name, "--plot", limits, "--output", tmp_path / "t.csv")
    shown = open_page(browser, flagged)
    assert_clean(shown)
    assert shown["traces"] == 2
    symbols = [s for trace in shown["symbols"] for s in trace]
    assert symbols.count("x") == len(truth.flagged_frames) and "circle" in symbols
    shown = open_page(browser, limits)
    assert_clean(shown)
    assert shown["traces"] == 2 and "O'Brien's transient" in shown["title"]
    symbols = [s for trace in shown["symbols"] for s in trace]
    assert "triangle-down-open" in symbols and "circle" in symbols


def test_folded_period_and_night_pages(browser, lc_database, tmp_path):
    url, truth = lc_database
    folded, period, night = tmp_path / "folded.html", tmp_path / "period.html", tmp_path / "night.html"
    invoke(url, "lc", "--source-id", truth.variable, "--fold", "0.3712345", "--plot", folded, "--output",
           tmp_path / "x.csv")
    invoke(url, "period", "--source-id", truth.variable, "--plot", period)
    invoke(url, "night-report", truth.nights[0].isoformat(), "--output", night)
    shown = open_page(browser, folded)
    assert_clean(shown)
    assert shown["traces"] == 2 and -0.1 < shown["xrange"][0] and shown["xrange"][1] < 1.1
    shown = open_page(browser, period)
    assert_clean(shown)
    assert shown["traces"] == 3 and sorted(shown["names"][1:]) == ["R", "V"]  # periodogram + one per filter
    shown = open_page(browser, night)
    assert_clean(shown)
    assert shown["traces"] == 4 * 2  # four panels, two filters
    assert set(shown["names"]) == {"V", "R"}
