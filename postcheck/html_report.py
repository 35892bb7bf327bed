"""The post-check as one self-contained HTML page (`postcheck --html FILE`).

Summary, every check (filterable), the signals of templates/signals.yml per instance before and
after the load, and every panel of every dashboard drawn over the post-check's window from
Prometheus' query_range, with the panel's own queries (variables resolved as the dashboard
checks resolve them), unit, legend format and grid position. Charts are drawn in the browser
by uPlot, vendored under postcheck/assets and inlined: the file needs no network.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from html import escape
from pathlib import Path
from typing import Any, Protocol

import requests

from postcheck.dashboards import (
    Dashboard,
    load_dashboards,
    na_reason,
    panels_with_repeat,
    repeat_source,
    substitute,
    variable_values,
)
from postcheck.fleet import Fleet
from postcheck.httpclient import describe_error
from postcheck.prometheus import Prometheus, selector
from postcheck.report import CheckFailed, counts_by_kind
from postcheck.signals import MetricExpectation, SignalSet

ASSETS = Path(__file__).parent / "assets"
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
MAX_POINTS = 240  # per series: enough for a readable line, small for 200 workers
PANEL_ROW_PX = 30  # Grafana's grid unit height
SIGNIFICANT = 5  # digits kept per value in the page's data
# Range queries of histogram quantiles over hundreds of instances take Prometheus seconds each:
# a few at a time, each given longer than the checks' instant queries.
RANGE_THREADS = 4
RANGE_TIMEOUT_S = 120.0


class Sources(Protocol):
    """What the page is drawn from besides the report: the post-check's Options has these."""

    @property
    def vllm_job(self) -> str: ...
    @property
    def node_job(self) -> str: ...
    @property
    def dashboards_dir(self) -> Path: ...
    @property
    def signals(self) -> SignalSet: ...
    @property
    def timeout_s(self) -> float: ...


@dataclass(frozen=True)
class Window:
    """The charts' time range: from before the post-check (a baseline) to the report."""

    start: float
    end: float
    step: float
    run_start: float  # the post-check's start: "before the load"
    run_end: float

    @property
    def points(self) -> list[float]:
        n = int((self.end - self.start) // self.step) + 1
        return [round(self.start + i * self.step, 3) for i in range(n)]


def window_of(summary: Mapping[str, Any], scrape_interval_s: float, now: float) -> Window:
    started = datetime.fromisoformat(str(summary["started"])).timestamp()
    run_end = started + float(summary.get("duration") or 0.0)
    start = started - max(30.0, 4 * scrape_interval_s)  # a baseline before the load
    end = max(now, run_end)
    step = max(scrape_interval_s, math.ceil((end - start) / MAX_POINTS))
    return Window(start, end, step, started, run_end)


def _num(v: float) -> float | None:
    if math.isnan(v) or math.isinf(v):
        return None
    return float(f"{v:.{SIGNIFICANT}g}")


def legend(fmt: str, labels: Mapping[str, str]) -> str:
    """Grafana's legendFormat: {{label}} replaced; empty: the series' labels."""
    if not fmt.strip() or fmt.strip() == "__auto":
        name = labels.get("__name__", "")
        rest = {k: v for k, v in labels.items() if k != "__name__"}
        return selector(name, rest) if rest or not name else name
    # A label the series lacks renders empty, as in Grafana.
    return " ".join(_LEGEND_LABEL.sub(lambda m: labels.get(m[1], ""), fmt).split())


def _aligned(points: list[tuple[float, float]], w: Window, n: int) -> list[float | None]:
    values: list[float | None] = [None] * n
    for t, v in points:
        i = round((t - w.start) / w.step)
        if 0 <= i < n:
            values[i] = _num(v)
    return values


def _verdict(checks: list[Mapping[str, Any]], file: str, title: str) -> dict[str, str]:
    """The dashboard check(s) of one panel: worst status first, with their details."""
    mine = [
        c
        for c in checks
        if c["name"] == "dashboard"
        and (c["target"] == f"{file} > {title}" or c["target"].startswith(f"{file} > {title} ["))
    ]
    if not mine:  # no per-panel check: the one for every dashboard (no Prometheus), if any
        mine = [
            c
            for c in checks
            if c["name"] == "dashboard"
            and " > " not in c["target"]
            and not str(c["target"]).endswith(".json")
        ]
    for status in ("fail", "skip", "pass"):
        hit = [c for c in mine if c["status"] == status]
        if hit:
            return {"status": status, "detail": " | ".join(c["detail"] for c in hit)}
    return {"status": "none", "detail": "no dashboard check ran for this panel"}


class _Builder:
    def __init__(self, prom: Prometheus | None, window: Window, why_not: str) -> None:
        self.prom = prom
        self.w = window
        self.n = len(window.points)
        self.why_not = why_not

    def series(self, expr: str, fmt: str) -> tuple[list[dict[str, Any]], str | None]:
        if self.prom is None:
            return [], self.why_not
        try:
            result = self.prom.query_range(expr, self.w.start, self.w.end, self.w.step)
        except CheckFailed as exc:
            return [], str(exc)
        except requests.RequestException as exc:
            return [], describe_error(exc)
        rows = [
            {"name": legend(fmt, labels), "values": _aligned(points, self.w, self.n)}
            for labels, points in result
        ]
        return sorted(rows, key=lambda r: str(r["name"])), None

    def panel(
        self,
        dash: Dashboard,
        panel: Mapping[str, Any],
        values: Mapping[str, str],
        checks: list[Mapping[str, Any]],
    ) -> dict[str, Any]:
        title = str(panel.get("title") or f"panel {panel.get('id')}")
        fdefaults = _mapping(_mapping(panel.get("fieldConfig")).get("defaults"))
        overrides = _mapping(panel.get("fieldConfig")).get("overrides") or []
        grid = _mapping(panel.get("gridPos"))
        targets = [
            t for t in panel.get("targets") or [] if isinstance(t, Mapping) and t.get("expr")
        ]
        errors: list[str] = []
        rows: list[dict[str, Any]] = []
        ds = panel.get("datasource")
        if isinstance(ds, Mapping) and ds.get("type") not in (None, "prometheus"):
            errors.append(f"datasource type {ds.get('type')!r} is not Prometheus")
            targets = []
        for t in targets:
            try:
                expr = substitute(str(t["expr"]), values)
            except ValueError as exc:
                errors.append(f"{exc} in {t['expr']}")
                continue
            got, error = self.series(expr, str(t.get("legendFormat") or ""))
            for row in got:
                unit = _unit_override(overrides, str(t.get("refId", "")), str(row["name"]))
                if unit:
                    row["unit"] = unit
            rows += got
            if error:
                errors.append(f"[{t.get('refId', '?')}] {error}")
        try:
            shown_title = substitute(title, values)
        except ValueError:
            shown_title = title
        return {
            "title": shown_title,
            "type": str(panel.get("type") or "timeseries"),
            "unit": str(fdefaults.get("unit") or "short"),
            "min": fdefaults.get("min"),
            "max": fdefaults.get("max"),
            "grid": {k: int(grid.get(k, d)) for k, d in (("x", 0), ("y", 0), ("w", 12), ("h", 8))},
            "queries": len(targets),
            "series": rows,
            "errors": errors,
            "na": na_reason(panel),
            "verdict": _verdict(checks, dash.file, title),
        }


def _unit_override(overrides: Any, ref_id: str, name: str) -> str | None:
    """The unit a field override gives a series (matched by its query's refId or its name)."""
    unit = None
    for o in overrides if isinstance(overrides, list) else []:
        matcher = _mapping(_mapping(o).get("matcher"))
        wanted = {"byFrameRefID": ref_id, "byName": name}.get(str(matcher.get("id")))
        if wanted is None or matcher.get("options") != wanted:
            continue
        for prop in _mapping(o).get("properties") or []:
            if _mapping(prop).get("id") == "unit":
                unit = str(_mapping(prop).get("value"))
    return unit


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _sections(panels: Any) -> list[tuple[str | None, list[Mapping[str, Any]]]]:
    """The dashboard's rows: (row title or None for panels above the first row, panels)."""
    sections: list[tuple[str | None, list[Mapping[str, Any]]]] = [(None, [])]
    for panel in panels or []:
        if not isinstance(panel, Mapping):
            continue
        if panel.get("type") == "row":
            sections.append((str(panel.get("title") or ""), []))
            inner = panel.get("panels")
            sections[-1][1].extend(p for p in inner or [] if isinstance(p, Mapping))
        else:
            sections[-1][1].append(panel)
    return [s for s in sections if s[1] or s[0] is not None]


def _repeat_values(
    prom: Prometheus | None, dash: Dashboard, names: set[str | None]
) -> dict[str, str]:
    """What a repeated row's title shows: the values Grafana repeats it over, listed."""
    out: dict[str, str] = {}
    for name in sorted(n for n in names if n):
        source = repeat_source(dash.data, name)
        if source is None or prom is None:
            continue
        sel, label = source
        try:
            found = prom.query(f"count by ({label}) ({sel})")
        except (CheckFailed, requests.RequestException):
            continue
        out[name] = ", ".join(sorted(s.labels.get(label, "") for s in found)) or "(none)"
    return out


def _drawn(panel: Mapping[str, Any]) -> bool:
    return isinstance(panel.get("targets"), list) and bool(panel["targets"])


def dashboards_data(
    prom: Prometheus | None,
    opt: Sources,
    w: Window,
    scrape_interval_s: float,
    checks: list[Mapping[str, Any]],
    why_not: str,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(dashboards with their sections of panel indexes, panels), queried in parallel."""
    dashboards, broken = load_dashboards(opt.dashboards_dir)
    dashboards.sort(key=lambda d: d.file != opt.signals.dashboard)  # the fleet's own first
    b = _Builder(prom, w, why_not)
    jobs: list[Callable[[], dict[str, Any]]] = []
    out: list[dict[str, Any]] = []
    for dash in dashboards:
        values = variable_values(
            dash.data,
            job=opt.vllm_job,
            node_job=opt.node_job,
            scrape_interval_s=scrape_interval_s,
            range_s=w.run_end - w.run_start,
        )
        repeats = {id(p): r for p, r in panels_with_repeat(dash.data.get("panels"))}
        shown_values = {**values, **_repeat_values(prom, dash, set(repeats.values()))}
        sections = []
        for row_title, members in _sections(dash.data.get("panels")):
            indexes = []
            for p in members:
                if not _drawn(p):
                    continue
                indexes.append(len(jobs))
                jobs.append(partial(b.panel, dash, p, values, checks))
            shown = row_title
            if row_title is not None:
                with contextlib.suppress(ValueError):
                    shown = substitute(row_title, shown_values)
            sections.append({"title": shown, "panels": indexes})
        out.append(
            {
                "file": dash.file,
                "title": str(dash.data.get("title") or dash.file),
                "sections": sections,
                "repeats": sorted({r for r in repeats.values() if r}),
            }
        )
    for file, error in broken:
        out.append({"file": file, "title": file, "sections": [], "error": error})
    with ThreadPoolExecutor(max_workers=RANGE_THREADS) as pool:
        drawn: list[dict[str, Any]] = list(pool.map(lambda job: job(), jobs))
    return out, drawn


def _signal_query(exp: MetricExpectation, job: str) -> tuple[str, str]:
    """(expression by instance, how it reads) of one expectation over the window."""
    sel = selector(exp.name, {"job": job, **exp.labels})
    if exp.kind == "gauge_seen_above_zero":
        return f"max by (instance) ({sel})", "before → peak"
    if exp.kind == "present":
        return f"count by (instance) ({sel})", "series before → after"
    if exp.kind == "up":
        return f"min by (instance) ({sel})", "before → after"
    return f"sum by (instance) ({sel})", "before → after (+delta)"


def signals_data(prom: Prometheus | None, opt: Sources, w: Window, fleet: Fleet) -> dict[str, Any]:
    """Per instance and expectation: the value before the load, after (or its peak)."""
    columns: list[dict[str, Any]] = []
    labels = {wk.instance: wk.label for wk in fleet.workers}
    cells: dict[str, dict[int, str]] = {lbl: {} for lbl in labels.values()}
    if prom is None:
        return {"columns": columns, "rows": cells}
    for sig in opt.signals.signals:
        for exp in sig.metrics:
            expr, reads = _signal_query(exp, opt.vllm_job)
            col = len(columns)
            columns.append({"signal": sig.title, "metric": exp.selector, "reads": reads})
            try:
                result = prom.query_range(expr, w.run_start, w.end, w.step)
            except (CheckFailed, requests.RequestException) as exc:
                columns[-1]["error"] = str(exc)
                continue
            for lab, points in result:
                who = labels.get(lab.get("instance", ""))
                if who is None or not points:
                    continue
                first, last = points[0][1], points[-1][1]
                if exp.kind == "gauge_seen_above_zero":
                    last = max(v for _, v in points)
                text = f"{_fmt(first)} → {_fmt(last)}"
                if exp.kind == "counter_delta":
                    text += f" (+{_fmt(last - first)})"
                cells[who][col] = text
    return {"columns": columns, "rows": cells}


def _fmt(v: float) -> str:
    n = _num(v)
    if n is None:
        return str(v)
    return str(int(n)) if n == int(n) else f"{n:g}"


# ---------------------------------------------------------------------------- the page
def _h(text: Any) -> str:
    return escape(str(text), quote=True)


def _summary_html(report: Mapping[str, Any]) -> str:
    s = report["summary"]
    checks = report["checks"]
    rows = "".join(
        f"<tr><td>{_h(k)}</td><td class=n>{p}</td><td class='n{' bad' if f else ''}'>{f}</td>"
        f"<td class=n>{sk}</td></tr>"
        for k, (p, f, sk) in counts_by_kind((c["name"], c["status"]) for c in checks).items()
    )
    verdict = "FAILED" if s.get("failed") else "PASSED"
    versions = s.get("vllm_version") or {}
    inst = versions.get("instances") or {}
    running = sorted({str(v) for v in inst.values()})
    workers = s.get("workers") or []
    worker_list = ", ".join(_h(x) for x in workers)
    facts = [
        ("started", f"{s.get('started')} UTC, {s.get('duration')} s"),
        ("fleet", f"{len(workers)} vLLM instances from {s.get('source')}"),
        ("Prometheus", f"{s.get('prometheus') or '-'}, every {s.get('scrape_interval_s')} s"),
        ("Grafana", _grafana_text(s.get("grafana"))),
        ("vLLM pinned", f"{versions.get('pinned')} ({versions.get('pinned_from')})"),
        ("vLLM running", ", ".join(running) or "-"),
    ]
    load = s.get("load") or {}
    if isinstance(load, Mapping):  # its settings, whatever the load reports (not per instance)
        settings = {k: v for k, v in load.items() if not isinstance(v, Mapping | list)}
        shown = "; ".join(
            f"{k.replace('_', ' ')} {v}" for k, v in settings.items() if v is not None
        )
        facts.append(("load", shown or "-"))
    dl = "".join(f"<dt>{_h(k)}</dt><dd>{_h(v)}</dd>" for k, v in facts)
    return (
        f"<section id=summary><h2>Summary <span class='verdict {verdict.lower()}'>{verdict}"
        f"</span></h2><p class=counts>{s.get('passed', 0)} passed, {s.get('failed', 0)} failed, "
        f"{s.get('skipped', 0)} skipped</p><div class=cols><dl>{dl}</dl>"
        f"<table class=kinds><thead><tr><th>check</th><th>passed</th><th>failed</th>"
        f"<th>skipped</th></tr></thead><tbody>{rows}</tbody></table></div>"
        f"<details><summary>the {len(workers)} instances</summary><p>{worker_list}</p></details>"
        f"</section>"
    )


def _grafana_text(g: Any) -> str:
    if not isinstance(g, Mapping):
        return str(g or "-")
    shown = {k: ", ".join(v) if isinstance(v, list | tuple) else v for k, v in g.items()}
    return "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in shown.items() if v not in (None, ""))


def _checks_html(checks: list[Mapping[str, Any]]) -> str:
    counts = {st: sum(c["status"] == st for c in checks) for st in ("fail", "skip", "pass")}
    first = "fail" if counts["fail"] else "all"  # failures first: thousands of rows bury them
    buttons = "".join(
        f"<button data-filter={st} class='{st}{' on' if st == first else ''}'>{st} {n}</button>"
        for st, n in {"all": len(checks), **counts}.items()
    )
    rows = "".join(
        f"<tr class={c['status']}{' hidden' if first != 'all' and c['status'] != first else ''}>"
        f"<td><span class='badge {c['status']}'>{c['status'].upper()}"
        f"</span></td><td>{_h(c['name'])}</td><td>{_h(c['target'])}</td>"
        f"<td class=detail>{_h(c['detail'])}</td></tr>"
        for c in checks
    )
    return (
        "<section id=checks><h2>Checks</h2><div class=filters>"
        f"{buttons}<input type=search id=check-search placeholder='filter by text'></div>"
        "<div class=scroll><table id=check-table class=checks><thead><tr><th>status</th>"
        f"<th>check</th><th>target</th><th>detail</th></tr></thead><tbody>{rows}</tbody>"
        "</table></div></section>"
    )


def _signals_html(sig: Mapping[str, Any]) -> str:
    columns = sig["columns"]
    if not columns:
        return (
            "<section id=signals><h2>Signals per instance</h2>"
            "<p class=muted>no Prometheus: nothing to show</p></section>"
        )
    head1 = "".join(
        f"<th title='{_h(c.get('error', ''))}'>{_h(c['signal'])}<br><code>{_h(c['metric'])}</code>"
        f"<br><small>{_h(c['reads'])}</small></th>"
        for c in columns
    )
    body = "".join(
        f"<tr><th>{_h(who)}</th>"
        + "".join(f"<td>{_h(cells.get(i, 'no data'))}</td>" for i in range(len(columns)))
        + "</tr>"
        for who, cells in sig["rows"].items()
    )
    return (
        "<section id=signals><h2>Signals per instance, before and after the load</h2>"
        "<p class=muted>From Prometheus: the value when the post-check started, and at the "
        "end (gauges: their peak during the run).</p><div class=scroll><table class=signals>"
        f"<thead><tr><th>instance</th>{head1}</tr></thead><tbody>{body}</tbody></table></div>"
        "</section>"
    )


def _dashboards_html(dashboards: list[dict[str, Any]], panels: list[dict[str, Any]]) -> str:
    parts = ["<section id=dashboards><h2>Dashboards</h2>"]
    for d in dashboards:
        parts.append(f"<h3>{_h(d['title'])} <small>{_h(d['file'])}</small></h3>")
        if d.get("error"):
            parts.append(f"<p class=bad>{_h(d['error'])}</p>")
        for sec in d["sections"]:
            if sec["title"] is not None:
                parts.append(f"<h4 class=row>{_h(sec['title'])}</h4>")
            if not sec["panels"]:
                continue
            top = min(panels[i]["grid"]["y"] for i in sec["panels"])
            parts.append("<div class=grid>")
            for i in sec["panels"]:
                p = panels[i]
                g = p["grid"]
                v = p["verdict"]
                style = (
                    f"grid-column:{g['x'] + 1}/span {g['w']};"
                    f"grid-row:{g['y'] - top + 1}/span {g['h']}"
                )
                note = ""
                if v["status"] in ("fail", "skip", "none") or p["errors"]:
                    note = "<p class=note>" + _h("; ".join([*p["errors"], v["detail"]])) + "</p>"
                parts.append(
                    f"<div class=panel data-panel={i} style='{style}'><div class=head>"
                    f"<span class=title>{_h(p['title'])}</span>"
                    f"<span class='badge {v['status']}' title='{_h(v['detail'])}'>"
                    f"{v['status'].upper()}</span></div>{note}<div class=chart></div></div>"
                )
            parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


def _json_for_script(data: Any) -> str:
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/")


def render(
    report: Mapping[str, Any],
    window: Window,
    dashboards: list[dict[str, Any]],
    panels: list[dict[str, Any]],
    signals: Mapping[str, Any],
) -> str:
    checks = list(report["checks"])
    data = {
        "x": window.points,
        "start": window.start,
        "end": window.end,
        "run": [window.run_start, window.run_end],
        "panels": panels,
    }
    s = report["summary"]
    title = f"vLLM fleet post-check {s.get('started', '')}"
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width'><title>{_h(title)}</title>"
        f"<style>{(ASSETS / 'uPlot.min.css').read_text()}\n{(ASSETS / 'report.css').read_text()}"
        f"</style></head><body><header><h1>{_h(title)}</h1><nav><a href=#summary>summary</a>"
        "<a href=#checks>checks</a><a href=#signals>signals</a><a href=#dashboards>dashboards</a>"
        "</nav></header><main>"
        + _summary_html(report)
        + _checks_html(checks)
        + _signals_html(signals)
        + _dashboards_html(dashboards, panels)
        + f"</main><script type=application/json id=report-data>{_json_for_script(data)}</script>"
        f"<script>{(ASSETS / 'uPlot.iife.min.js').read_text()}</script>"
        f"<script>{(ASSETS / 'report.js').read_text()}</script></body></html>\n"
    )


def html_report(report: Mapping[str, Any], fleet: Fleet, opt: Sources, now: float) -> str:
    """The page for a finished post-check (`report` is what --json writes)."""
    summary = report["summary"]
    w = window_of(summary, fleet.scrape_interval_s, now)
    prom = (
        Prometheus(fleet.prometheus_url, max(opt.timeout_s, RANGE_TIMEOUT_S), fleet.prometheus_auth)
        if fleet.prometheus_url
        else None
    )
    why_not = fleet.prometheus_missing_reason
    checks = list(report["checks"])
    dashboards, panels = dashboards_data(prom, opt, w, fleet.scrape_interval_s, checks, why_not)
    signals = signals_data(prom, opt, w, fleet)
    return render(report, w, dashboards, panels, signals)


def write_html(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def panel_count(dashboards: Iterable[Dashboard]) -> int:
    """Panels the page draws (those with queries), for tests and the benchmark."""
    return sum(
        1
        for d in dashboards
        for _, panels in _sections(d.data.get("panels"))
        for p in panels
        if _drawn(p)
    )
