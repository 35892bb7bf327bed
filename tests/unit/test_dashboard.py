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

from gateway.metrics import Metrics
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
# Names outside vLLM that the dashboards may use, each from the exporter that owns it.
DCGM = {  # NVIDIA DCGM exporter (job gpu)
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_POWER_USAGE",
}
NODE = {  # node_exporter 1.5 (Debian 12), default collectors (job node)
    "node_cpu_seconds_total",
    "node_memory_MemTotal_bytes",
    "node_memory_MemAvailable_bytes",
    "node_filesystem_avail_bytes",
    "node_filesystem_size_bytes",
    "node_disk_read_bytes_total",
    "node_disk_written_bytes_total",
    "node_network_receive_bytes_total",
    "node_network_transmit_bytes_total",
}
GATEWAY = {  # the design's gateway (job gateway), a later milestone
    "gateway_requests_total",
    "gateway_request_latency_seconds_bucket",
    "gateway_queue_depth",
    "gateway_queue_wait_seconds_sum",
    "gateway_queue_wait_seconds_count",
    "gateway_queue_wait_seconds_bucket",
    "gateway_errors_total",
    "gateway_worker_up",
}
# Panels that cannot have data on the lab say why; the post-check lists them as skipped.
NA_GPU = "no NVIDIA GPU exporter on this fleet"
SIGNAL_PANELS = (
    "Worker up/down",
    "Queue depth",
    "In-flight requests",
    "Queue wait time",
    "Request latency p50/p95",
    "Throughput",
    "Errors",
)


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
    assert [p.name for p in DASHBOARDS] == ["gateway.json", "gpu-host.json", "vllm-fleet.json"]


def metric_names(expr: str) -> set[str]:
    return set(METRIC.findall(expr)) - PROMQL_WORDS


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, matchers) of every `name{...}` in expr."""
    return re.findall(r"((?:vllm:)?[a-zA-Z_][\w:]*)\{([^}]*)\}", expr)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_identity_and_datasource(path: Path) -> None:
    """uid = file name (the Grafana role removes and looks dashboards up by both)."""
    dash = load(path)
    assert dash["uid"] == path.stem and dash["schemaVersion"] == 39
    assert dash["title"] and dash["description"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert ds["current"]["value"] == "prometheus"  # the uid the role provisions
    for p in iter_panels(dash["panels"]):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        for t in p.get("targets", []):
            assert t["datasource"] == p["datasource"], p["title"]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, v["name"]


def test_dashboard_uids_and_titles_are_unique() -> None:
    dashboards = [load(p) for p in DASHBOARDS]
    assert len({d["uid"] for d in dashboards}) == len(dashboards)
    assert len({d["title"] for d in dashboards}) == len(dashboards)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_panels_do_not_overlap(path: Path) -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in iter_panels(load(path)["panels"]):
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_without_data_on_the_lab_say_why_and_only_those(path: Path) -> None:
    """GPU panels cannot have data on the lab; every other panel must, so it carries no n/a
    marker and the post-check runs its queries (the gateway's: while the gateways group has
    hosts, as on the lab; without, the post-check skips them, saying so)."""
    for p in iter_panels(load(path)["panels"]):
        names = set().union(*(metric_names(t["expr"]) for t in p.get("targets", [])))
        if names & DCGM:
            expected: str | None = NA_GPU
        else:
            expected = None
        assert na_reason(p) == expected, p["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_zero_fallback_only_where_a_series_may_not_exist_yet(path: Path) -> None:
    """`or 0 * sum(...)` hides a missing series: only the instrumentator's status classes,
    created at their first request, need it."""
    for expr in all_exprs(load(path)):
        if re.search(r"\bor\b", expr):
            assert "http_requests_total" in expr and re.search(r"\bor\s+0 \* sum", expr), expr


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
        if p.get("type") == "row":
            continue
        assert p.get("title") and p.get("description"), p
        assert p.get("targets"), f"{p['title']}: no query"
        ref_ids = [t.get("refId") for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"{p['title']}: duplicate refId"
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
def test_dashboard_uses_no_removed_metric_and_only_vllm_032_names(
    path: Path, recorded_series: dict[str, str]
) -> None:
    text = path.read_text()
    for old in REMOVED:
        assert old not in text, old
    # Prometheus's own series: targets' up, and ALERTS (the alerts firing panel).
    families = reference_families() | {"up", "ALERTS"}
    for expr in all_exprs(load(path)):
        for name in set(METRIC.findall(expr)) - PROMQL_WORDS:
            if name in DCGM | NODE | GATEWAY or name in recorded_series:
                continue
            assert not name.startswith(("DCGM_", "node_", "gateway_")), f"unknown name {name}"
            assert family_of(name, families), f"{name} is not a vLLM 0.32 metric: {expr}"
            if name.startswith("vllm:"):
                family = re.sub(r"_(bucket|count|sum)$", "", name)
                assert family in families, f"{name}: no such vLLM 0.32 family"


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


def test_fleet_dashboard_queries_filter_and_aggregate(recorded_series: dict[str, str]) -> None:
    for expr in all_exprs(load(FLEET)):
        for m in re.finditer(r"((?:vllm:)?[a-zA-Z_][\w:]*)\{([^}]*)\}", expr):
            name, matchers = m.groups()
            if name in recorded_series:  # SLO rows: recorded per model, one row per SLO
                assert matchers == 'model_name=~"$slo_model"', expr
                continue
            if name == "ALERTS":  # Prometheus's own: alerts of every job, and of none
                continue
            assert 'job=~"$job"' in matchers and 'instance=~"$instance"' in matchers, expr
            if name.startswith("vllm:"):
                assert 'model_name=~"$model"' in matchers, expr
        if "vllm:num_requests" in expr:
            assert re.match(r"sum by \(model_name[,)]", expr), "gauges are summed over engines"
        if "vllm:kv_cache_usage_perc" in expr:
            # a ratio: averaged over an instance's engines, never summed
            assert expr.startswith("avg by (model_name, instance) ("), expr
    text = FLEET.read_text()
    assert (
        "rate(vllm:request_queue_time_seconds_sum" in text
        and "rate(vllm:request_queue_time_seconds_count" in text
    )
    assert 'finished_reason=\\"error\\"' in text and "vllm:admission_rejections_total" in text
    assert 'status=\\"4xx\\"' in text and 'status=\\"5xx\\"' in text


def panels_by_title(path: Path) -> dict[str, Any]:
    return {p["title"]: p for p in iter_panels(load(path)["panels"])}


def exprs_of(panel: Any) -> list[str]:
    return [t["expr"] for t in panel["targets"]]


def test_fleet_dashboard_keeps_the_signal_panels() -> None:
    panels = panels_by_title(FLEET)
    for title in SIGNAL_PANELS:
        assert title in panels, title
    assert [p["id"] for p in iter_panels(load(FLEET)["panels"])][:7] == list(range(1, 8))


@pytest.mark.parametrize(
    ("title", "quantiles", "family"),
    [
        (
            "End-to-end latency p50/p95/p99",
            ("0.50", "0.95", "0.99"),
            "vllm:e2e_request_latency_seconds_bucket",
        ),
        (
            "Time to first token p50/p95",
            ("0.50", "0.95"),
            "vllm:time_to_first_token_seconds_bucket",
        ),
        (
            "Inter-token latency p50/p95",
            ("0.50", "0.95"),
            "vllm:inter_token_latency_seconds_bucket",
        ),
        ("Request latency p50/p95", ("0.50", "0.95"), "vllm:e2e_request_latency_seconds_bucket"),
    ],
)
def test_fleet_dashboard_latency_quantiles(
    title: str, quantiles: tuple[str, ...], family: str
) -> None:
    exprs = exprs_of(panels_by_title(FLEET)[title])
    assert len(exprs) == len(quantiles)
    for q, expr in zip(quantiles, exprs, strict=True):
        assert expr.startswith(f"histogram_quantile({q}, sum by (model_name, le) (rate({family}{{")
        assert expr.endswith("}[$__rate_interval])))"), expr


def test_fleet_dashboard_throughput_cache_and_errors() -> None:
    panels = panels_by_title(FLEET)
    tokens = exprs_of(panels["Tokens per second"])
    assert [m for e in tokens for m in metric_names(e)] == [
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
    ]
    assert all(e.startswith("sum by (model_name) (rate(") for e in tokens)
    (kv,) = exprs_of(panels["KV cache usage"])
    assert metric_names(kv) == {"vllm:kv_cache_usage_perc"}
    assert panels["KV cache usage"]["fieldConfig"]["defaults"]["unit"] == "percentunit"
    (preempt,) = exprs_of(panels["Preemptions"])
    assert preempt.startswith("sum by (model_name) (rate(vllm:num_preemptions_total{")
    client, server, engine, admission = exprs_of(panels["Errors"])
    assert 'status="4xx"' in client and 'status="5xx"' in server
    assert 'finished_reason="error"' in engine and "vllm:request_success_total" in engine
    assert "vllm:admission_rejections_total" in admission
    average, p95 = exprs_of(panels["Queue wait time"])
    numerator, denominator = average.split("\n/\n")
    assert "rate(vllm:request_queue_time_seconds_sum{" in numerator
    assert "rate(vllm:request_queue_time_seconds_count{" in denominator
    assert p95.startswith("histogram_quantile(0.95, sum by (model_name, le) (rate(")


def test_gpu_host_dashboard() -> None:
    path = TEMPLATES / "dashboards" / "gpu-host.json"
    dash = load(path)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    # No `job` variable: the post-check sets $job to the vLLM job on every dashboard.
    assert "job" not in variables
    assert variables["node_job"]["query"] == "node" and variables["gpu_job"]["query"] == "gpu"
    assert variables["host"]["includeAll"] and variables["host"]["allValue"] == ".*"
    used: set[str] = set()
    for expr in all_exprs(dash):
        for name, matchers in selectors(expr):
            used.add(name)
            job = "$gpu_job" if name in DCGM else "$node_job"
            assert f'job=~"{job}"' in matchers and 'host=~"$host"' in matchers, expr
    assert used >= DCGM and used - DCGM <= NODE
    titles = set(panels_by_title(path))
    assert titles >= {
        "GPU utilization",
        "GPU memory used / total",
        "GPU temperature",
        "GPU power",
        "CPU busy",
        "Memory used / total",
        "Disk space used",
        "Disk I/O",
        "Network",
    }


def test_gateway_dashboard() -> None:
    path = TEMPLATES / "dashboards" / "gateway.json"
    dash = load(path)
    used = {name for e in all_exprs(dash) for name in metric_names(e)}
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in used}
    assert families == {
        "gateway_requests_total",
        "gateway_request_latency_seconds",
        "gateway_queue_depth",
        "gateway_queue_wait_seconds",
        "gateway_errors_total",
        "gateway_worker_up",
    }
    for expr in all_exprs(dash):
        for _, matchers in selectors(expr):
            assert 'job=~"$gateway_job"' in matchers and 'host=~"$host"' in matchers, expr
    assert {na_reason(p) for p in iter_panels(dash["panels"])} == {None}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboards_link_to_each_other(path: Path) -> None:
    """The design's "two tabs": every dashboard is tagged vllm and links to every dashboard
    tagged vllm (the fleet, the gateway, the GPU hosts), keeping the time range."""
    dash = load(path)
    assert "vllm" in dash["tags"]
    links = [lk for lk in dash["links"] if lk["type"] == "dashboards"]
    assert [lk["tags"] for lk in links] == [["vllm"]] and links[0]["keepTime"] is True


def test_fleet_dashboard_queries_are_valid_promql() -> None:
    """promtool (Debian's prometheus package, installed by make setup) parses every query."""
    promtool = shutil.which("promtool")
    assert promtool is not None, "no promtool: make setup installs Debian's prometheus"
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


@pytest.mark.parametrize("file", ["signals.yml", "gateway-signals.yml"])
def test_signals_map_to_dashboard_panels_that_query_their_metrics(file: str) -> None:
    sigs = load_signals(TEMPLATES / file)
    dashboard = TEMPLATES / "dashboards" / sigs.dashboard
    panels = {p["title"]: p for p in iter_panels(load(dashboard)["panels"])}
    for sig in sigs.signals:
        assert sig.panels, sig.id
        for title in sig.panels:
            assert title in panels, f"{sig.id}: no panel {title!r} in {dashboard.name}"
        text = " ".join(t["expr"] for title in sig.panels for t in panels[title]["targets"])
        for m in sig.metrics:
            family = re.sub(r"_(bucket|count|sum)$", "", m.name)
            assert family in text, f"{sig.id}: panels {sig.panels} do not query {family}"


def test_gateway_signals_cover_the_six_families_the_gateway_exposes() -> None:
    """One definition: templates/gateway-signals.yml names exactly the families the gateway's
    registry exposes (gateway/metrics.py), and every panel of gateway.json draws a signal."""
    sigs = load_signals(TEMPLATES / "gateway-signals.yml")
    assert sigs.dashboard == "gateway.json"
    exposed = Metrics(["m"], [("w", "m")]).exposition().decode()
    families = {line.split()[2] for line in exposed.splitlines() if line.startswith("# TYPE")}
    named = {re.sub(r"_(bucket|count|sum)$", "", m.name) for s in sigs.signals for m in s.metrics}
    assert named - {"up"} == families and len(families) == 6
    drawn = {t for s in sigs.signals for t in s.panels}
    dash = load(TEMPLATES / "dashboards" / "gateway.json")
    assert drawn == {p["title"] for p in iter_panels(dash["panels"]) if p.get("targets")}


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


def test_slo_row_panels_repeat_over_the_slo_variable() -> None:
    """The post-check skips them when $slo_model has no values, as Grafana shows none."""
    from postcheck.dashboards import Dashboard, repeat_source

    dash = load(FLEET)
    queries, _ = panel_queries(Dashboard(FLEET.name, dash))
    repeated = {q.title for q in queries if q.repeat == "slo_model"}
    assert repeated == {"SLO objectives", "SLO current ratio (1h)", "Error budget remaining"}
    assert all(q.repeat is None for q in queries if q.title not in repeated)
    assert repeat_source(dash, "slo_model") == (
        "model_name:vllm_slo_availability:objective",
        "model_name",
    )


def test_prefix_cache_panel_is_the_recording_rules_ratio(recorded_series: dict[str, str]) -> None:
    """The panel and the recording rule compute one ratio: Δhits / Δqueries per pool (the
    panel over Grafana's rate interval and the dashboard's filters, the rule over 5m)."""
    (expr,) = exprs_of(panels_by_title(FLEET)["Prefix cache hit ratio"])
    rule = " ".join(recorded_series["model_name:vllm_prefix_cache_hits:ratio_rate5m"].split())
    selector = '{job=~"$job", model_name=~"$model", instance=~"$instance"}'
    as_panel = rule.replace('{job="vllm"}', selector).replace("[5m]", "[$__rate_interval]")
    assert " ".join(expr.split()) == as_panel
    assert metric_names(expr) == {
        "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"}
    assert panels_by_title(FLEET)["Prefix cache hit ratio"]["fieldConfig"]["defaults"]["unit"] == (
        "percentunit")
