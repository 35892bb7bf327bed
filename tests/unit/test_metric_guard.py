"""The upgrade guard: every metric name the project queries exists in the pinned vLLM.

The dashboards, the recording and alerting rules the prometheus role writes, and the
post-check's signals all name metrics. Each name must be one of: a family (or a sample of
one) in templates/vllm-metrics/<pinned vllm_version>.txt, a series the recording rules make,
or a metric of another exporter the project scrapes (node_exporter, DCGM, the gateway,
Prometheus itself). A miss fails naming the panel or rule and the metric: that is what goes
blank after a vLLM upgrade renames a metric.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, TEMPLATES, rules_of

from postcheck.dashboards import iter_panels
from postcheck.signals import load_signals
from postcheck.vllm_metrics import (
    Family,
    family_name,
    load_families,
    pinned_version,
    promql_metric_names,
)

METRICS_DIR = TEMPLATES / "vllm-metrics"
VLLM_DEFAULTS = REPO / "roles" / "vllm" / "defaults" / "main.yml"
# Exporters other than vLLM, each owning its prefix; Prometheus's own series.
OTHER_EXPORTERS = re.compile(r"^(node_|DCGM_|gateway_|prometheus_)|^(up|ALERTS|ALERTS_FOR_STATE)$")
BUCKETS_LINE = re.compile(r"^# buckets (\S+): (.*)$", re.MULTILINE)
CAPTURE_HINT = (
    "run `make capture-vllm-metrics` (it boots a lab host with the pinned vLLM, sends a small "
    "load, scrapes /metrics and writes the file), review the diff and commit it"
)


def pinned_families(defaults: Path = VLLM_DEFAULTS) -> tuple[str, dict[str, Family]]:
    version = pinned_version(defaults)
    path = METRICS_DIR / f"{version}.txt"
    if not path.is_file():
        pytest.fail(f"no {path.relative_to(REPO)} for the pinned vLLM {version}: {CAPTURE_HINT}")
    return version, load_families(METRICS_DIR, version)


def uses(rules_dir: Path) -> Iterator[tuple[str, str]]:
    """(where, metric name) for every name the project queries."""
    for path in sorted((TEMPLATES / "dashboards").glob("*.json")):
        for panel in iter_panels(json.loads(path.read_text())["panels"]):
            for target in panel.get("targets", []):
                for name in promql_metric_names(target.get("expr", "")):
                    yield f"dashboard {path.name} panel {panel['title']!r}", name
    for file, rule in rules_of(rules_dir):
        kind = f"alert {rule['alert']}" if "alert" in rule else f"recording rule {rule['record']}"
        for name in promql_metric_names(rule["expr"]):
            yield f"rule file {file} {kind}", name
    for signal in load_signals(TEMPLATES / "signals.yml").signals:
        for metric in signal.metrics:
            if metric.kind != "up":
                yield f"post-check signal {signal.id} (templates/signals.yml)", metric.name


def unknown_names(
    used: list[tuple[str, str]], families: Mapping[str, Family], recorded: set[str]
) -> list[str]:
    return sorted(
        f"{where} uses {name}"
        for where, name in used
        if name not in recorded
        and not OTHER_EXPORTERS.match(name)
        and family_name(name, families) is None
    )


@pytest.fixture(scope="module")
def used(rendered_rules: Path) -> list[tuple[str, str]]:
    return list(uses(rendered_rules))


def test_every_name_the_project_queries_is_served_by_the_pinned_vllm(
    used: list[tuple[str, str]], recorded_series: dict[str, str]
) -> None:
    version, families = pinned_families()
    assert len(used) > 100, "too few metric uses found: the extraction is broken"
    missing = unknown_names(used, families, set(recorded_series))
    assert not missing, f"not served by vLLM {version}, not recorded by a rule:\n" + "\n".join(
        missing
    )


def test_a_renamed_metric_is_caught_naming_the_panel_and_the_rule(
    used: list[tuple[str, str]], recorded_series: dict[str, str]
) -> None:
    """What an upgrade that renames vllm:num_requests_waiting would look like."""
    _, families = pinned_families()
    renamed = {k: v for k, v in families.items() if k != "vllm:num_requests_waiting"}
    missing = unknown_names(used, renamed, set(recorded_series))
    assert "dashboard vllm-fleet.json panel 'Queue depth' uses vllm:num_requests_waiting" in missing
    assert "rule file vllm.alerts.yml alert VllmQueueDepthHigh uses vllm:num_requests_waiting" in (
        missing
    )
    assert (
        "post-check signal queue_depth (templates/signals.yml) uses vllm:num_requests_waiting"
        in missing
    )


def test_every_recorded_series_used_is_recorded(
    used: list[tuple[str, str]], recorded_series: dict[str, str]
) -> None:
    level_names = {name for _, name in used if re.match(r"^[a-z_]+:[a-z_]+:", name)}
    assert level_names, "no recording rule is used"
    assert level_names <= set(recorded_series), level_names - set(recorded_series)


def test_a_pinned_version_without_its_file_says_how_to_capture_one(tmp_path: Path) -> None:
    defaults = tmp_path / "main.yml"
    defaults.write_text('vllm_version: "0.99.0"\n')
    hint = r"vllm-metrics/0\.99\.0\.txt .*make capture-vllm-metrics"
    with pytest.raises(pytest.fail.Exception, match=hint):
        pinned_families(defaults)


def test_slo_thresholds_are_the_pinned_latency_buckets() -> None:
    """The prometheus role refuses SLO thresholds that are not a bucket boundary: its list
    must be the pinned release's."""
    version, _ = pinned_families()
    text = (METRICS_DIR / f"{version}.txt").read_text()
    buckets = dict(BUCKETS_LINE.findall(text))
    assert "vllm:e2e_request_latency_seconds" in buckets, f"{version}.txt lists no buckets"
    captured = [float(x) for x in buckets["vllm:e2e_request_latency_seconds"].split(",")]
    role_vars: dict[str, Any] = yaml.safe_load(
        (REPO / "roles" / "prometheus" / "vars" / "main.yml").read_text()
    )
    assert [float(x) for x in role_vars["__prometheus_vllm_latency_buckets"]] == captured
