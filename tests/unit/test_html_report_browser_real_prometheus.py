"""`postcheck --html` against a REAL Prometheus scraping fake vLLMs, opened in headless Chromium.

Debian's chromium and chromium-driver (make setup installs them), driven by selenium: every
dashboard panel drawn (a canvas with pixels; data drawn in colour where the panel's check
passed), no JavaScript console error, no network request. The page and its screenshot are
kept in $POSTCHECK_HTML_ARTIFACTS (default /tmp/postcheck-html-report) for people to look at.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import TEMPLATES, Result
from fakes import FakeVLLM
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from test_real_prometheus_against_fake_vllm import real_prometheus  # noqa: F401 (fixture)

from postcheck.dashboards import load_dashboards
from postcheck.html_report import panel_count
from postcheck.signals import load_signals

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
# make setup installs Debian's chromium and chromium-driver: a missing one is a set-up error,
# not a reason to skip.
assert CHROMIUM and CHROMEDRIVER, "no chromium/chromedriver: run make setup"
ARTIFACTS = Path(os.environ.get("POSTCHECK_HTML_ARTIFACTS", "/tmp/postcheck-html-report"))

# Per panel: its canvas' size, pixels drawn at all (axes, grid) and pixels in a saturated
# colour (the series: axes and grid are grey).
PANEL_PIXELS = """
return [...document.querySelectorAll('.panel[data-panel]')].map(el => {
  const c = el.querySelector('canvas');
  const title = el.querySelector('.title').textContent;
  const verdict = el.querySelector('.badge').textContent;
  if (!c) return {title, verdict, canvas: false};
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let drawn = 0, colour = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] > 0) drawn++;
    const hi = Math.max(d[i], d[i + 1], d[i + 2]), lo = Math.min(d[i], d[i + 1], d[i + 2]);
    if (d[i + 3] > 200 && hi - lo > 60) colour++;
  }
  return {title, verdict, canvas: true, width: c.width, height: c.height, drawn, colour,
          series: +el.dataset.rendered, nodata: !!el.querySelector('.nodata')};
});
"""


def chromium(width: int = 1600, height: int = 1000) -> webdriver.Chrome:
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(executable_path=str(CHROMEDRIVER)))


def open_report(path: Path, screenshot: Path) -> tuple[list[dict[str, Any]], list[Any], Any]:
    """(panels' pixel counts, console messages, network resources) of the page in Chromium."""
    driver = chromium()
    try:
        driver.get(path.as_uri())
        driver.execute_script("return document.body.dataset.ready")
        panels = driver.execute_script(PANEL_PIXELS)
        resources = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        logs = driver.get_log("browser")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1600, min(int(height) + 40, 16000))
        driver.save_screenshot(str(screenshot))
        return panels, logs, resources
    finally:
        driver.quit()


def test_every_panel_drawn_in_headless_chromium_from_real_prometheus(
    fake_vllm: Callable[..., FakeVLLM],
    real_prometheus: Callable[[list[FakeVLLM], list[str]], str],  # noqa: F811
    run_postcheck: Callable[..., Result],
    tmp_path: Path,
) -> None:
    vllms = [fake_vllm(capacity=2, delay=0.03) for _ in range(2)]
    node = fake_vllm(metrics="node")
    prom = real_prometheus(vllms, [node.instance])
    html = tmp_path / "report.html"
    r = run_postcheck(
        *(a for v in vllms for a in ("--worker", f"{v.url},tiny")),
        *("--prometheus", prom, "--node-exporter", node.instance, "--html", str(html)),
        *("--scrape-interval", "500ms", "--requests", "8", "--concurrency", "6", "--timeout", "5"),
        *("--load-seconds", "4"),  # a few scrapes' worth of curve on every chart
    )
    assert r.code == 0, r.out
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    kept = ARTIFACTS / "report.html"
    shutil.copyfile(html, kept)
    screenshot = ARTIFACTS / "report.png"
    text = html.read_text()
    assert "<script src" not in text and "<link" not in text  # every asset inline

    panels, logs, resources = open_report(kept, screenshot)
    print(f"report: {kept} ({len(text)} bytes), screenshot: {screenshot}")

    dashboards, _ = load_dashboards(TEMPLATES / "dashboards")
    assert len(panels) == panel_count(dashboards) > 0
    errors = [e for e in logs if e.get("level") in ("SEVERE", "ERROR")]
    assert errors == [], errors
    assert resources == [], f"the page fetched {resources}"
    not_drawn = [p["title"] for p in panels if not (p["canvas"] and p["width"] and p["drawn"])]
    assert not_drawn == [], f"panels without a drawn chart: {not_drawn}"
    # data-rendered: series with values; they are drawn in colour, else "No data" is said
    blank = [p["title"] for p in panels if bool(p["series"]) != bool(p["colour"])]
    assert blank == [], f"series drawn without colour, or colour without series: {blank}"
    assert all(p["nodata"] == (p["series"] == 0) for p in panels), json.dumps(panels)
    # The six signals' panels show the load.
    signal_panels = {t for s in load_signals(TEMPLATES / "signals.yml").signals for t in s.panels}
    shown = {p["title"]: p for p in panels}
    assert signal_panels <= shown.keys()
    empty = [t for t in signal_panels if not shown[t]["series"]]
    assert empty == [], f"signal panels without data: {empty}"
    assert any(p["verdict"] in ("SKIP", "FAIL") and p["nodata"] for p in panels)  # GPU panels
    assert screenshot.stat().st_size > 10_000
