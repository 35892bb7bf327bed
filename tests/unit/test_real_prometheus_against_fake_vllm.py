"""The post-check against a REAL Prometheus (Debian's package) scraping fake vLLMs.

Proves the PromQL the post-check and the dashboard send (sum, count, max_over_time,
histogram_quantile, the `or 0 *` fallback) and the instance labels work on the real thing.
Skipped where the prometheus binary is not installed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Result, dashboard_checks, render_rules
from fakes import FakeVLLM
from realservers import start_prometheus


@pytest.fixture
def real_prometheus(tmp_path: Path) -> Iterator[Callable[[list[FakeVLLM], list[str]], str]]:
    """A real Prometheus scraping the fakes as the role's file_sd labels them, with the role's
    rule files (an SLO for the fakes' model `tiny`, so the SLO rows have data)."""
    procs: list[subprocess.Popen[bytes]] = []
    (tmp_path / "slo.yml").write_text(
        "prometheus_vllm_slos: [{model: tiny, availability: 0.99, latency_threshold_seconds: 5,"
        " latency_objective: 0.95, window: 30d}]\nprometheus_slo_budget_interval: 1s\n"
    )
    rules = render_rules(tmp_path / "rules", tmp_path / "slo.yml")

    def start(vllms: list[FakeVLLM], nodes: list[str]) -> str:
        vllm_targets = "\n".join(
            f"      - targets: ['{v.instance}']\n"
            f"        labels: {{host: w{i}, vllm_instance: main, model: tiny}}"
            for i, v in enumerate(vllms)
        )
        proc, url = start_prometheus(
            "global: {scrape_interval: 500ms, scrape_timeout: 500ms, evaluation_interval: 500ms}\n"
            f"rule_files: ['{rules}/*.yml']\n"
            "scrape_configs:\n"
            "  - job_name: vllm\n    static_configs:\n" + vllm_targets + "\n"
            "  - job_name: node\n    static_configs:\n"
            f"      - targets: {nodes!r}\n",
            tmp_path,
        )
        procs.append(proc)
        return url

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


def test_full_pass_with_real_prometheus_against_fake_vllm(
    fake_vllm: Callable[..., FakeVLLM],
    real_prometheus: Callable[[list[FakeVLLM], list[str]], str],
    run_postcheck: Callable[..., Result],
) -> None:
    vllm = fake_vllm(capacity=2, delay=0.03)
    node = fake_vllm(metrics="node")  # stands in for node_exporter: any /metrics will do
    prom = real_prometheus([vllm], [node.instance])

    r = run_postcheck(
        "--worker",
        f"{vllm.url},tiny",
        "--prometheus",
        prom,
        "--node-exporter",
        node.instance,
        *("--scrape-interval", "500ms", "--requests", "8", "--concurrency", "6", "--timeout", "5"),
    )  # no --load-seconds: two scrape intervals by default

    assert r.code == 0, r.out
    assert r.report["summary"]["failed"] == 0
    assert len(r.checks("dashboard", "pass")) == dashboard_checks()[0]
    assert r.checks("prometheus.queue_depth:vllm:num_requests_waiting", "pass")
    assert {c["target"] for c in r.checks("prometheus.up", "pass")} == {
        f"vllm/{vllm.instance}",
        f"node/{node.instance}",
    }
