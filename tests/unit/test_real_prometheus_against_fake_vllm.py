"""The post-check against a REAL Prometheus (Debian's package) scraping fake vLLMs.

Proves the PromQL the post-check and the dashboard send (sum, count, max_over_time,
histogram_quantile, the `or 0 *` fallback) and the instance labels work on the real thing.
Skipped where the prometheus binary is not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import pytest
from conftest import Result, dashboard_checks, render_rules, write_inventory
from fakes import FakeVLLM
from realservers import start_prometheus

from postcheck.testing.fakes import PRODUCTION_PER_TOKEN_S, PRODUCTION_SLOTS, PRODUCTION_TTFT_S


class HasInstance(Protocol):
    @property
    def instance(self) -> str: ...


StartPrometheus = Callable[[Sequence[HasInstance], list[str]], str]


@pytest.fixture
def real_prometheus(tmp_path: Path) -> Iterator[StartPrometheus]:
    """A real Prometheus scraping the fakes as the role's file_sd labels them, with the role's
    rule files (an SLO for the fakes' model `tiny`, so the SLO rows have data)."""
    procs: list[subprocess.Popen[bytes]] = []
    (tmp_path / "slo.yml").write_text(
        "prometheus_vllm_slos: [{model: tiny, availability: 0.99, latency_threshold_seconds: 5,"
        " latency_objective: 0.95, window: 30d}]\nprometheus_slo_budget_interval: 1s\n"
    )
    rules = render_rules(tmp_path / "rules", tmp_path / "slo.yml")

    def start(vllms: Sequence[HasInstance], nodes: list[str]) -> str:
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
    real_prometheus: StartPrometheus,
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


@pytest.fixture
def production_worker() -> Iterator[SimpleNamespace]:
    """One production-shaped fake vLLM (256 slots, GPU-like token rates) in its own asyncio
    process: a thread per request would need 260 threads in the test process."""
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "postcheck.testing.aiofleet", "--count", "1"),
            *("--capacity", str(PRODUCTION_SLOTS), "--delay", str(PRODUCTION_TTFT_S)),
            *("--per-token", str(PRODUCTION_PER_TOKEN_S)),
        ],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    [port] = json.loads(proc.stdout.readline())["ports"]
    yield SimpleNamespace(port=port, instance=f"127.0.0.1:{port}")
    proc.terminate()
    proc.wait(timeout=10)
    proc.stdout.close()


def test_queue_proven_at_256_slots_with_default_flags_real_prometheus(
    tmp_path: Path,
    production_worker: SimpleNamespace,
    fake_vllm: Callable[..., FakeVLLM],
    real_prometheus: StartPrometheus,
    run_postcheck: Callable[..., Result],
) -> None:
    """The issue's Problem 1: the inventory says max-num-seqs 256 (as inventory/example);
    with no load flags the post-check fills that queue and keeps it filled until the real
    Prometheus has scraped it above 0."""
    node = fake_vllm(metrics="node")
    prom = real_prometheus([production_worker], [node.instance])
    node_port = node.instance.rpartition(":")[2]
    hosts: dict[str, Any] = {
        "gpu_workers": {"hosts": {"gpu1": {
            "ansible_host": "127.0.0.1",
            "node_exporter_web_listen_address": f"0.0.0.0:{node_port}",
            "vllm_device": "gpu",
            "vllm_engine_args": {"gpu-memory-utilization": 0.9, "max-num-seqs": 256},
            "vllm_instances": [{"name": "main", "port": production_worker.port,
                                "model": "/srv/models/x", "served_model_name": "tiny"}],
        }}},
        "monitoring": {"hosts": {"mon": {
            "ansible_host": "127.0.0.1",
            "node_exporter_web_listen_address": f"0.0.0.0:{node_port}",
            "prometheus_web_listen_address": f"0.0.0.0:{prom.rpartition(':')[2]}",
            "prometheus_scrape_interval": "500ms",
            "grafana_install_package": False,
        }}},
    }
    inv = write_inventory(tmp_path, {"all": {"children": hosts}})

    r = run_postcheck("-i", str(inv))  # no load flags at all

    assert r.code == 0, r.out
    load = r.report["summary"]["load"]["instances"]["gpu1/main"]
    assert load["capacity"] == 256 and load["capacity_source"] == "max-num-seqs 256 (inventory)"
    assert load["in_flight"] == 260 and load["queue_probe"]
    assert load["proof"] == "Prometheus" and load["peaks"]["vllm:num_requests_waiting"] > 0
    assert load["completions_ok"] == load["completions_sent"] and not load["errors"]
    assert load["other_traffic"] is None  # idle: exact deltas
    [queue] = r.checks("prometheus.queue_depth:vllm:num_requests_waiting", "pass")
    assert "max_over_time" in queue["detail"]
    exact = r.checks("metrics.request_latency:vllm:e2e_request_latency_seconds_count", "pass")
    assert f"+{load['completions_ok']} = completions answered 200" in exact[0]["detail"]
    print(
        f"256 slots: {load['completions_sent']} completions x 32 tokens + "
        f"{load['invalid_sent']} invalid in {load['seconds']} s, queue proven after "
        f"{load['proven_after_s']} s"
    )
