"""The host panels of gpu-host.json against a REAL node_exporter scraped by a REAL Prometheus.

Both come from Debian (prometheus-node-exporter 1.5, prometheus 2.42), the versions the fleet
runs. Every panel that is not marked `postcheck: n/a` must return data, with its variables
replaced exactly as the post-check replaces them: a misspelled node_exporter name, a filter
that drops everything (overlay or tmpfs only, a renamed device) or a broken expression fails
here before it reaches a fleet. make setup installs both; a missing one fails the module.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import TEMPLATES
from realservers import NODE_EXPORTER, PROMETHEUS, free_port, start_prometheus, wait_ready

from postcheck.dashboards import Dashboard, panel_queries, substitute, variable_values

GPU_HOST = TEMPLATES / "dashboards" / "gpu-host.json"
SCRAPE_S = 0.5

# make setup installs both from Debian; a missing one is a set-up error, not a reason to skip.
assert PROMETHEUS and NODE_EXPORTER, "no prometheus/node_exporter: run make setup"


@pytest.fixture
def prometheus_scraping_node_exporter(tmp_path: Path) -> Iterator[str]:
    assert PROMETHEUS is not None and NODE_EXPORTER is not None
    procs: list[subprocess.Popen[bytes]] = []
    try:
        node_port = free_port()
        # The fleet's node_exporter role switches timex off; the rest are the defaults.
        node = subprocess.Popen(
            [
                NODE_EXPORTER,
                f"--web.listen-address=127.0.0.1:{node_port}",
                "--no-collector.timex",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(node)
        wait_ready(f"http://127.0.0.1:{node_port}/metrics", node, "node_exporter")
        # The labels the prometheus role's file_sd gives node targets: host = inventory name.
        prom, url = start_prometheus(
            "global: {scrape_interval: 500ms, scrape_timeout: 500ms}\n"
            "scrape_configs:\n"
            "  - job_name: node\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{node_port}']\n"
            "        labels: {host: test-host}\n",
            tmp_path,
        )
        procs.append(prom)
        yield url
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)


def query(url: str, expr: str) -> list[object]:
    resp = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5)
    body = resp.json()
    assert body["status"] == "success", f"{expr}: {body}"
    result = body["data"]["result"]
    assert isinstance(result, list)
    return result


def test_every_host_panel_returns_data_from_a_real_node_exporter(
    prometheus_scraping_node_exporter: str,
) -> None:
    url = prometheus_scraping_node_exporter
    dash = Dashboard(GPU_HOST.name, json.loads(GPU_HOST.read_text()))
    values = variable_values(dash.data, job="vllm", scrape_interval_s=SCRAPE_S, range_s=60)
    queries, skipped = panel_queries(dash)
    assert {s.title for s in skipped} == {
        "GPU utilization",
        "GPU memory used / total",
        "GPU temperature",
        "GPU power",
    }
    assert {q.title for q in queries} == {
        "CPU busy",
        "Memory used / total",
        "Disk space used",
        "Disk I/O",
        "Network",
    }
    # Rates need two samples of every counter.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if query(url, 'count_over_time(up{job="node"}[1m]) >= 3'):
            break
        time.sleep(0.2)
    else:
        pytest.fail("node_exporter was not scraped three times")
    empty = []
    for q in queries:
        expr = substitute(q.expr, values)
        result = query(url, expr)
        if not result:
            empty.append(f"{q.title} [{q.ref_id}]: {expr}")
            continue
        for series in result:
            assert isinstance(series, dict)
            assert series["metric"].get("host") == "test-host", (q.title, series)
    assert not empty, "panels without data:\n" + "\n".join(empty)
