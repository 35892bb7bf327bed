"""The provisioned dashboards and templates/signals.yml: structure, vLLM 0.32 names."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TEMPLATES

from postcheck.dashboards import (
    VARIABLE,
    Dashboard,
    iter_panels,
    na_reason,
    panel_queries,
    substitute,
    variable_values,
)
from postcheck.promtext import family_of
from postcheck.signals import load_signals

DASHBOARDS = sorted((TEMPLATES / "dashboards").glob("*.json"))
FLEET = TEMPLATES / "dashboards" / "vllm-fleet.json"
REFERENCE = TEMPLATES / "vllm-metrics" / "0.32.0.txt"
GRAFANA_BUILTINS = {
    "__all",
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
}
REMOVED = (
    "vllm:gpu_cache_usage_perc",
    "vllm:time_per_output_token_seconds",
    "vllm:request_failure_total",
    "vllm:avg_",
)
METRIC = re.compile(r"\b((?:vllm:)?[a-zA-Z_][a-zA-Z0-9_:]*)\s*\{")
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def reference_families() -> set[str]:
    names = set()
    for line in REFERENCE.read_text().splitlines():
        if line and not line.startswith("#"):
            names.add(line.split("|")[0].strip())
    return names


def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def all_exprs(dash: dict[str, Any]) -> list[str]:
    return [
        t["expr"]
        for p in iter_panels(dash["panels"])
        for t in p.get("targets", [])
        if t.get("expr")
    ]


def datasource_refs(node: Any) -> list[Any]:
    """Every "datasource" value anywhere in the JSON."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "datasource":
                found.append(v)
            found += datasource_refs(v)
    elif isinstance(node, list):
        for v in node:
            found += datasource_refs(v)
    return found


def test_there_are_dashboards() -> None:
    assert FLEET in DASHBOARDS


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_json_structure(path: Path) -> None:
    dash = load(path)
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 39
    panels = list(iter_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        grid = p["gridPos"]
        assert set(grid) >= {"h", "w", "x", "y"} and grid["x"] + grid["w"] <= 24, p["title"]
        for t in p.get("targets", []):
            assert t.get("refId") and t.get("expr"), p["title"]
    refs = datasource_refs(dash)
    assert refs, "panels must name their datasource"
    for ref in refs:
        assert ref in (
            {"type": "prometheus", "uid": "${datasource}"},
            {"type": "prometheus", "uid": "prometheus"},
        )


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_variables_are_defined_and_rates_use_rate_interval(path: Path) -> None:
    dash = load(path)
    defined = {v["name"] for v in dash["templating"]["list"]} | GRAFANA_BUILTINS
    text = json.dumps(dash)
    used = {m.group(1) or m.group(2) or m.group(3) for m in VARIABLE.finditer(text)}
    assert used <= defined, f"undefined variables: {used - defined}"
    for expr in all_exprs(dash):
        for window in re.findall(r"\[([^\]]+)\]", expr):
            assert window == "$__rate_interval", expr


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_uses_no_removed_metric_and_only_vllm_032_names(path: Path) -> None:
    text = path.read_text()
    for old in REMOVED:
        assert old not in text, old
    families = reference_families() | {"up"}
    for expr in all_exprs(load(path)):
        for name in set(METRIC.findall(expr)) - PROMQL_WORDS:
            if name.startswith("gateway_"):
                continue  # a later gateway dashboard: its metrics are the gateway's own
            assert family_of(name, families), f"{name} is not a vLLM 0.32 metric: {expr}"


def test_fleet_dashboard_basics() -> None:
    dash = load(FLEET)
    assert (
        dash["uid"] == "vllm-fleet"
        and dash["title"] == "vLLM fleet"
        and dash["schemaVersion"] == 39
    )
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource"
        and variables["datasource"]["query"] == "prometheus"
    )
    assert variables["job"]["current"]["value"] == "vllm"
    assert (
        variables["model"]["definition"]
        == 'label_values(vllm:num_requests_running{job=~"$job"}, model_name)'
    )
    assert variables["instance"]["definition"] == 'label_values(up{job=~"$job"}, instance)'
    for name in ("model", "instance"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    for p in iter_panels(dash["panels"]):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_fleet_dashboard_queries_filter_and_aggregate() -> None:
    for expr in all_exprs(load(FLEET)):
        for m in re.finditer(r"((?:vllm:)?[a-zA-Z_][\w:]*)\{([^}]*)\}", expr):
            name, matchers = m.groups()
            assert 'job=~"$job"' in matchers and 'instance=~"$instance"' in matchers, expr
            if name.startswith("vllm:"):
                assert 'model_name=~"$model"' in matchers, expr
        if "vllm:num_requests" in expr:
            assert expr.startswith("sum by (model_name) ("), "gauges are summed over engines"
    text = FLEET.read_text()
    assert (
        "rate(vllm:request_queue_time_seconds_sum" in text
        and "rate(vllm:request_queue_time_seconds_count" in text
    )
    assert 'finished_reason=\\"error\\"' in text and "vllm:admission_rejections_total" in text
    assert 'status=\\"4xx\\"' in text and 'status=\\"5xx\\"' in text


def test_fleet_dashboard_queries_are_valid_promql() -> None:
    """promtool (Debian's prometheus package) parses every substituted query, where installed."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed")
    rules = []
    for path in DASHBOARDS:
        dash = Dashboard(path.name, load(path))
        values = variable_values(dash.data, job="vllm", scrape_interval_s=15, range_s=60)
        queries, _ = panel_queries(dash)
        rules += [
            {
                "record": f"check:q{i}:{path.stem.replace('-', '_')}",
                "expr": substitute(q.expr, values),
            }
            for i, q in enumerate(queries)
        ]
    rules_file = Path(pytest.importorskip("tempfile").mkdtemp()) / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_variable_substitution() -> None:
    dash = load(FLEET)
    values = variable_values(dash, job="vllm", scrape_interval_s=15, range_s=90)
    assert values["job"] == "vllm" and values["model"] == ".*" and values["instance"] == ".*"
    assert (
        values["__rate_interval"] == "60s"
        and values["__interval"] == "15s"
        and values["__range"] == "90s"
    )
    assert (
        variable_values(dash, job="vllm", scrape_interval_s=30, range_s=60)["__rate_interval"]
        == "120s"
    )
    assert substitute('x{a=~"$model",b="${instance}",c="[[job]]"}[$__rate_interval]', values) == (
        'x{a=~".*",b=".*",c="vllm"}[60s]'
    )
    with pytest.raises(ValueError, match=r"undefined variable \$nope"):
        substitute('x{a=~"$nope"}', values)


def test_na_marker() -> None:
    assert na_reason({"description": "GPU.\npostcheck: n/a: no GPUs here"}) == "no GPUs here"
    assert na_reason({"description": "Postcheck: N/A"}) == "marked n/a in its description"
    assert na_reason({"description": "mentions postcheck: n/a mid-line"}) is None
    assert na_reason({}) is None


# --- signals.yml ------------------------------------------------------------------------


def test_signals_define_the_six_design_signals() -> None:
    sigs = load_signals(TEMPLATES / "signals.yml")
    assert [s.id for s in sigs.signals] == [
        "queue_depth",
        "queue_wait_time",
        "request_latency",
        "in_flight",
        "worker_state",
        "errors",
    ]
    assert sigs.dashboard == FLEET.name
    kinds = {m.kind for s in sigs.signals for m in s.metrics}
    assert kinds == {"counter_delta", "gauge_seen_above_zero", "present", "up"}


def test_signals_map_to_dashboard_panels_that_query_their_metrics() -> None:
    sigs = load_signals(TEMPLATES / "signals.yml")
    panels = {p["title"]: p for p in iter_panels(load(FLEET)["panels"])}
    for sig in sigs.signals:
        assert sig.panels, sig.id
        for title in sig.panels:
            assert title in panels, f"{sig.id}: no panel {title!r} in {FLEET.name}"
        text = " ".join(t["expr"] for title in sig.panels for t in panels[title]["targets"])
        for m in sig.metrics:
            family = re.sub(r"_(bucket|count|sum)$", "", m.name)
            assert family in text, f"{sig.id}: panels {sig.panels} do not query {family}"


def test_signals_name_only_vllm_032_metrics() -> None:
    families = reference_families() | {"up"}
    raw = (TEMPLATES / "signals.yml").read_text()
    for old in REMOVED:
        assert old not in yaml.safe_dump(yaml.safe_load(raw)), old
    for sig in load_signals(TEMPLATES / "signals.yml").signals:
        for m in sig.metrics:
            assert family_of(m.name, families), f"{m.name} is not a vLLM 0.32 metric"


def test_reference_copy_matches_the_vllm_032_scrape() -> None:
    families = reference_families()
    assert len(families) > 50
    assert "vllm:num_requests_waiting" in families and "vllm:request_failure_total" not in families
