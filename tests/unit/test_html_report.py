"""postcheck/html_report.py without a browser: legends, units, window, layout, verdicts, and
`--html` where there is no Prometheus to draw from (the page says so on every panel)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import FAST, TEMPLATES, Result
from fakes import FakeVLLM

from postcheck.dashboards import load_dashboards
from postcheck.html_report import (
    _checks_html,
    _sections,
    _unit_override,
    _verdict,
    legend,
    panel_count,
    window_of,
)


def page_data(html: str) -> dict[str, Any]:
    m = re.search(r"<script type=application/json id=report-data>(.*?)</script>", html, re.S)
    assert m, "no data in the page"
    data: dict[str, Any] = json.loads(m.group(1).replace("<\\/", "</"))
    return data


def test_legend_format_as_grafana_renders_it() -> None:
    labels = {"__name__": "up", "instance": "w1:8000", "model_name": "tiny"}
    assert legend("p95 {{model_name}} {{ instance }}", labels) == "p95 tiny w1:8000"
    assert legend("used {{host}}", labels) == "used"  # a missing label renders empty
    assert legend("", labels) == 'up{instance="w1:8000",model_name="tiny"}'
    assert legend("__auto", {"job": "vllm"}) == '{job="vllm"}'


def test_unit_override_by_ref_id_and_by_name() -> None:
    overrides = [
        {
            "matcher": {"id": "byFrameRefID", "options": "C"},
            "properties": [{"id": "unit", "value": "s"}, {"id": "decimals", "value": 1}],
        },
        {
            "matcher": {"id": "byName", "options": "total"},
            "properties": [{"id": "unit", "value": "bytes"}],
        },
    ]
    assert _unit_override(overrides, "C", "x") == "s"
    assert _unit_override(overrides, "A", "total") == "bytes"
    assert _unit_override(overrides, "A", "x") is None
    assert _unit_override(None, "C", "x") is None


def test_window_has_a_baseline_and_bounded_points() -> None:
    summary = {"started": "2026-01-01T00:00:00+00:00", "duration": 3600.0}
    w = window_of(summary, 15.0, now=1767229200.0 + 3610)
    assert w.run_start == 1767225600.0 and w.run_end == w.run_start + 3600
    assert w.start == w.run_start - 60  # four scrape intervals before the run
    assert w.end == 1767229200.0 + 3610
    assert 200 <= len(w.points) <= 241 and w.step >= 15


def test_sections_follow_the_dashboard_rows() -> None:
    dashboards, _ = load_dashboards(TEMPLATES / "dashboards")
    fleet = next(d for d in dashboards if d.file == "vllm-fleet.json")
    sections = _sections(fleet.data["panels"])
    assert sections[0][0] is None and sections[-1][0] == "SLO: $slo_model"
    assert [p["title"] for p in sections[-1][1]] == [
        "SLO objectives",
        "SLO current ratio (1h)",
        "Error budget remaining",
    ]
    assert panel_count(dashboards) == sum(
        1
        for d in dashboards
        for _, ps in _sections(d.data["panels"])
        for p in ps
        if p.get("targets")
    )


def test_verdict_is_the_worst_of_the_panel_queries() -> None:
    checks = [
        {
            "name": "dashboard",
            "target": "a.json > Errors [A]",
            "status": "pass",
            "detail": "1 series",
        },
        {
            "name": "dashboard",
            "target": "a.json > Errors [B]",
            "status": "fail",
            "detail": "no data",
        },
        {"name": "dashboard", "target": "a.json > GPU", "status": "skip", "detail": "n/a: no GPU"},
        {
            "name": "dashboard",
            "target": "a.json > Errors by reason [A]",
            "status": "pass",
            "detail": "",
        },
    ]
    assert _verdict(checks, "a.json", "Errors") == {"status": "fail", "detail": "no data"}
    assert _verdict(checks, "a.json", "GPU") == {"status": "skip", "detail": "n/a: no GPU"}
    assert _verdict(checks, "a.json", "Other")["status"] == "none"


def test_html_without_prometheus_draws_every_panel_as_no_data(
    fake_vllm: Callable[..., FakeVLLM], run_postcheck: Callable[..., Result], tmp_path: Path
) -> None:
    vllm = fake_vllm()
    html = tmp_path / "report.html"
    r = run_postcheck("--worker", f"{vllm.url},tiny", "--html", str(html), *FAST)
    assert r.code == 0, r.out
    text = html.read_text()
    data = page_data(text)
    dashboards, _ = load_dashboards(TEMPLATES / "dashboards")
    assert len(data["panels"]) == panel_count(dashboards)
    for p in data["panels"]:
        assert p["series"] == [] and p["errors"], p["title"]
        assert "no --prometheus given" in p["errors"][0]
        assert p["verdict"]["status"] == "skip"
    assert text.count("class=panel ") == len(data["panels"])
    assert "<script src" not in text and "http://" not in text.split("<script")[0].replace(
        vllm.url, ""
    )  # no external asset; the only URL is the worker's


def test_html_path_that_cannot_be_written_is_said(
    fake_vllm: Callable[..., FakeVLLM],
    run_postcheck: Callable[..., Result],
    tmp_path: Path,
    capsys: Any,
) -> None:
    vllm = fake_vllm()
    r = run_postcheck(
        "--worker", f"{vllm.url},tiny", "--html", str(tmp_path / "no" / "r.html"), *FAST
    )
    assert r.code == 2
    assert f"cannot write {tmp_path / 'no' / 'r.html'}" in capsys.readouterr().err


def test_checks_open_on_the_failures_when_there_are_any() -> None:
    checks = [
        {"name": "health", "target": "w1", "status": "pass", "detail": "200"},
        {"name": "health", "target": "w2", "status": "fail", "detail": "refused <b>"},
    ]
    page = _checks_html(checks)
    assert "<button data-filter=fail class='fail on'>fail 1</button>" in page
    assert "<tr class=pass hidden>" in page and "<tr class=fail>" in page
    assert "refused &lt;b&gt;" in page  # details escaped
    calm = _checks_html(checks[:1])
    assert "class='all on'" in calm and " hidden>" not in calm
