"""Every panel query of the provisioned dashboards must return data from the fleet's Prometheus.

Grafana variables are replaced the way a user opening the dashboard would see them: `$job` by
the vLLM job, `$node_job` by node_exporter's, variables with "All" by their allValue (".*"),
others by their current value; `$__rate_interval` by max(4 x scrape interval, 1m),
`$__interval` by the scrape interval.

A panel that cannot have data on some fleets (GPU panels on CPU hosts, a gateway that is not
deployed yet) says so in its description with a line `postcheck: n/a: <reason>`; the post-check
then lists it as skipped with that reason instead of querying it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postcheck.fleet import UsageError, prom_duration

VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]")
NA_MARKER = re.compile(r"^\s*postcheck:\s*n/a\b[\s:\-]*(.*)$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str  # file name
    panel_id: int | None
    title: str
    ref_id: str
    expr: str
    repeat: str | None = None  # variable the panel (or its row) repeats over


@dataclass(frozen=True)
class PanelNA:
    dashboard: str
    title: str
    reason: str


@dataclass(frozen=True)
class Dashboard:
    file: str
    data: Mapping[str, Any]


def load_dashboards(directory: Path) -> tuple[list[Dashboard], list[tuple[str, str]]]:
    """(dashboards, [(file, error)]): broken files become failed checks, not a crash."""
    if not directory.is_dir():
        raise UsageError(f"dashboards folder {directory} does not exist (use --dashboards)")
    good: list[Dashboard] = []
    bad: list[tuple[str, str]] = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            bad.append((path.name, f"not valid JSON: {exc}"))
            continue
        if not isinstance(data, Mapping):
            bad.append((path.name, "not a JSON object"))
            continue
        good.append(Dashboard(path.name, data))
    return good, bad


def iter_panels(panels: Any) -> Iterator[Mapping[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in panels or []:
        if not isinstance(panel, Mapping):
            continue
        yield panel
        yield from iter_panels(panel.get("panels"))


def na_reason(panel: Mapping[str, Any]) -> str | None:
    m = NA_MARKER.search(str(panel.get("description") or ""))
    if m is None:
        return None
    return m.group(1).strip() or "marked n/a in its description"


def variable_values(
    dashboard: Mapping[str, Any],
    *,
    job: str,
    scrape_interval_s: float,
    range_s: float,
    node_job: str | None = None,
) -> dict[str, str]:
    """Values of every variable; `job` is the vLLM job, `node_job` (if given) node_exporter's."""
    values = {
        "__rate_interval": prom_duration(max(4 * scrape_interval_s, 60)),
        "__interval": prom_duration(scrape_interval_s),
        "__interval_ms": str(round(scrape_interval_s * 1000)),
        "__range": prom_duration(range_s),
        "__range_s": str(round(range_s)),
        "__range_ms": str(round(range_s * 1000)),
    }
    templating = dashboard.get("templating")
    variables = templating.get("list", []) if isinstance(templating, Mapping) else []
    for var in variables or []:
        if not isinstance(var, Mapping) or not isinstance(var.get("name"), str):
            continue
        name = var["name"]
        current = var.get("current") if isinstance(var.get("current"), Mapping) else {}
        value: Any = current.get("value") if current else None
        if name == "job":
            value = job
        elif name == "node_job" and node_job is not None:
            value = node_job
        elif var.get("includeAll"):
            value = var.get("allValue") or ".*"
        elif isinstance(value, list):
            value = value[0] if value else None
        if value in (None, "", "$__all"):
            options = var.get("options") or []
            value = options[0].get("value") if options and isinstance(options[0], Mapping) else None
        if value in (None, "") and var.get("type") in ("constant", "custom", "textbox"):
            value = str(var.get("query", "")).split(",")[0].strip() or None
        if value not in (None, ""):
            values[name] = str(value)
    return values


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """expr with every variable replaced; ValueError naming an undefined one."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise ValueError(f"undefined variable ${name}")
        return values[name]

    return VARIABLE.sub(repl, expr)


def panels_with_repeat(panels: Any) -> Iterator[tuple[Mapping[str, Any], str | None]]:
    """Every panel with the variable it repeats over: its own `repeat`, or its row's (the
    panels after an open row, or inside a collapsed one, until the next row)."""
    row_repeat: str | None = None
    for panel in panels or []:
        if not isinstance(panel, Mapping):
            continue
        own = panel.get("repeat") if isinstance(panel.get("repeat"), str) else None
        if panel.get("type") == "row":
            row_repeat = own
            for inner in iter_panels(panel.get("panels")):
                yield inner, (inner.get("repeat") or row_repeat)
            continue
        yield panel, (own or row_repeat)
        for inner in iter_panels(panel.get("panels")):
            yield inner, (inner.get("repeat") or own or row_repeat)


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*$")


def repeat_source(dashboard: Mapping[str, Any], variable: str) -> tuple[str, str] | None:
    """(series selector, label) of a `label_values(selector, label)` query variable."""
    templating = dashboard.get("templating")
    for var in templating.get("list", []) if isinstance(templating, Mapping) else []:
        if isinstance(var, Mapping) and var.get("name") == variable:
            query = var.get("query")
            text = query.get("query") if isinstance(query, Mapping) else query
            m = _LABEL_VALUES.match(str(text or var.get("definition") or ""))
            return (m.group(1), m.group(2)) if m else None
    return None


def panel_queries(dashboard: Dashboard) -> tuple[list[PanelQuery], list[PanelNA]]:
    queries: list[PanelQuery] = []
    skipped: list[PanelNA] = []
    for panel, repeat in panels_with_repeat(dashboard.data.get("panels")):
        targets = [
            t for t in panel.get("targets") or [] if isinstance(t, Mapping) and t.get("expr")
        ]
        if not targets:
            continue
        title = str(panel.get("title") or f"panel {panel.get('id')}")
        reason = na_reason(panel)
        ds = panel.get("datasource")
        if (
            reason is None
            and isinstance(ds, Mapping)
            and ds.get("type") not in (None, "prometheus")
        ):
            reason = f"datasource type {ds.get('type')!r} is not Prometheus"
        if reason is not None:
            skipped.append(PanelNA(dashboard.file, title, reason))
            continue
        pid = panel.get("id")
        for t in targets:
            queries.append(
                PanelQuery(
                    dashboard=dashboard.file,
                    panel_id=pid if isinstance(pid, int) else None,
                    title=title,
                    ref_id=str(t.get("refId", "?")),
                    expr=str(t["expr"]),
                    repeat=str(repeat) if repeat else None,
                )
            )
    return queries, skipped
