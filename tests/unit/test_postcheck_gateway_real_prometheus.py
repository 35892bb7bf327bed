"""The post-check's gateway phase end to end, without the lab: two FAKE vLLMs (postcheck's
FakeVLLM, not vLLM) behind the REAL gateway (`python -m gateway`, a subprocess), scraped by a
REAL Prometheus (Debian's package) with jobs vllm, node and gateway labelled as
roles/prometheus/templates/targets.j2 labels them, and the post-check CLI reading it all from
an inventory with a gateways group.

Proves that the load through the gateway's API port moves the six gateway_* families exactly
as templates/gateway-signals.yml expects, on the gateway's /metrics and through Prometheus
(job gateway), that the gateway's queue is proven through Prometheus, and that every panel
query of templates/dashboards/gateway.json returns data. Skipped where the prometheus binary
is not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from conftest import FAST, TEMPLATES, Result, write_inventory
from fakes import FakeVLLM
from realservers import PROMETHEUS, start_prometheus

from postcheck.signals import load_signals

# make setup installs it from Debian; a missing one is a set-up error, not a reason to skip.
assert PROMETHEUS, "no prometheus binary: run make setup"

MODEL = "tiny"
SLOTS = 2  # each fake's max-num-seqs (the inventory's vllm_engine_args)
QUEUE_SIZE = 8  # the pool's queue: holds the post-check's margin (4 for a capacity of 4)
SCRAPE = "500ms"
GATEWAY_HOST = "gw1"
WORKER_HOSTS = ("w0", "w1")


def fast_options() -> list[str]:
    """conftest.FAST without --scrape-interval (the inventory's is the real Prometheus's),
    with a shorter window for other traffic (nothing else sends any here)."""
    i = FAST.index("--scrape-interval")
    return [*FAST[:i], *FAST[i + 2 :], "--traffic-window", "0.5"]


@dataclass(frozen=True)
class RealGateway:
    api_port: int
    metrics_port: int

    @property
    def metrics_instance(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"


@pytest.fixture
def real_gateway(tmp_path: Path) -> Iterator[Callable[[list[FakeVLLM]], RealGateway]]:
    """The real gateway (`python -m gateway --config FILE`) on free loopback ports, one pool
    of the given workers named as roles/gateway/templates/pools.json.j2 names them
    (`<host>/<instance>`, capacity = their max-num-seqs); ready once every worker is."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(workers: list[FakeVLLM]) -> RealGateway:
        config = {
            "api": {"host": "127.0.0.1", "port": 0},
            "metrics": {"host": "127.0.0.1", "port": 0},
            "shutdown_timeout_s": 2,
            "health": {"interval_s": 0.25, "timeout_s": 0.25, "rise": 1, "fall": 3},
            "pools": [
                {
                    "model": MODEL,
                    "queue_size": QUEUE_SIZE,
                    "workers": [
                        {"name": f"{host}/main", "url": w.url, "capacity": SLOTS}
                        for host, w in zip(WORKER_HOSTS, workers, strict=True)
                    ],
                }
            ],
        }
        path = tmp_path / "gateway.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        log = tmp_path / "gateway.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "--config", str(path), "--log-level", "info"],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        procs.append(proc)
        started = wait_started(proc, log)
        gw = RealGateway(
            api_port=int(started["api"].rpartition(":")[2]),
            metrics_port=int(started["metrics"].rpartition(":")[2]),
        )
        wait_workers_ready(proc, gw, len(workers), log)
        return gw

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


def wait_started(proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    """The gateway's `started` log line (its ports: port 0 picks free ones)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # a line still being written
                continue
            if entry.get("event") == "started":
                return dict(entry)
        if proc.poll() is not None:
            pytest.fail(f"the gateway exited with {proc.returncode}: {log.read_text()}")
        time.sleep(0.05)
    pytest.fail(f"the gateway did not start: {log.read_text()}")


def wait_workers_ready(proc: subprocess.Popen[bytes], gw: RealGateway, n: int, log: Path) -> None:
    url = f"http://127.0.0.1:{gw.metrics_port}/admin/workers"
    deadline = time.monotonic() + 20
    workers: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the gateway exited with {proc.returncode}: {log.read_text()}")
        workers = requests.get(url, timeout=2).json()["workers"]
        if sum(bool(w["ready"]) for w in workers) == n:
            return
        time.sleep(0.05)
    pytest.fail(f"not every worker ready behind the gateway: {workers}")


# The prometheus role's Watchdog (roles/prometheus/templates/rules/node.alerts.yml.j2), alone:
# the fleet dashboard's "Alerts firing" panel needs a firing alert. Rendering the role's rule
# files takes ansible-playbook half a minute; test_real_prometheus_against_fake_vllm.py runs
# the post-check against all of them.
WATCHDOG_RULES = """\
groups:
  - name: watchdog
    rules:
      - alert: Watchdog
        expr: vector(1)
        labels: {severity: none}
"""


@pytest.fixture
def real_prometheus(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """A real Prometheus with this scrape config (the scrape_configs list's YAML) and the
    role's Watchdog alert."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(scrape_configs: str) -> str:
        folder = tmp_path / "prometheus"
        folder.mkdir()
        (folder / "watchdog.yml").write_text(WATCHDOG_RULES)
        proc, url = start_prometheus(
            f"global: {{scrape_interval: {SCRAPE}, scrape_timeout: {SCRAPE},"
            f" evaluation_interval: {SCRAPE}}}\n"
            f"rule_files: ['{folder / 'watchdog.yml'}']\n"
            "scrape_configs:\n" + scrape_configs,
            folder,
        )
        procs.append(proc)
        return url

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


def scrape_configs(vllms: list[FakeVLLM], node: str, gateway: str | None) -> str:
    """Jobs vllm, node and gateway with the labels roles/prometheus/templates/targets.j2 gives
    (host, vllm_instance, model on vllm; host on gateway)."""
    jobs: dict[str, list[dict[str, Any]]] = {
        "vllm": [
            {
                "targets": [v.instance],
                "labels": {"host": host, "vllm_instance": "main", "model": MODEL},
            }
            for host, v in zip(WORKER_HOSTS, vllms, strict=True)
        ],
        "node": [{"targets": [node], "labels": {"host": WORKER_HOSTS[0]}}],
    }
    if gateway is not None:
        jobs["gateway"] = [{"targets": [gateway], "labels": {"host": GATEWAY_HOST}}]
    return yaml.safe_dump(
        [{"job_name": job, "static_configs": groups} for job, groups in jobs.items()],
        sort_keys=False,
    )


def inventory(
    tmp_path: Path, vllms: list[FakeVLLM], node_port: int, prom: str, gw: RealGateway | None
) -> Path:
    node = {"ansible_host": "127.0.0.1", "node_exporter_web_listen_address": f"0.0.0.0:{node_port}"}
    groups: dict[str, Any] = {
        "gpu_workers": {
            "hosts": {
                host: {
                    **node,
                    "vllm_engine_args": {"max-num-seqs": SLOTS},
                    "vllm_instances": [
                        {
                            "name": "main",
                            "port": v.port,
                            "model": "/srv/models/x",
                            "served_model_name": MODEL,
                        }
                    ],
                }
                for host, v in zip(WORKER_HOSTS, vllms, strict=True)
            }
        },
        "monitoring": {
            "hosts": {
                "mon": {
                    **node,
                    "prometheus_web_listen_address": f"0.0.0.0:{prom.rpartition(':')[2]}",
                    "prometheus_scrape_interval": SCRAPE,
                    "grafana_install_package": False,
                }
            }
        },
    }
    if gw is not None:
        groups["gateways"] = {
            "hosts": {
                GATEWAY_HOST: {
                    **node,
                    "gateway_api_port": gw.api_port,
                    "gateway_metrics_port": gw.metrics_port,
                    "gateway_queue_size": QUEUE_SIZE,
                }
            }
        }
    return write_inventory(tmp_path, {"all": {"children": groups}})


def test_gateway_phase_fake_vllm_real_gateway_real_prometheus(
    tmp_path: Path,
    fake_vllm: Callable[..., FakeVLLM],
    real_gateway: Callable[[list[FakeVLLM]], RealGateway],
    real_prometheus: Callable[[str], str],
    run_postcheck: Callable[..., Result],
) -> None:
    """Fake vLLMs, the real gateway, a real Prometheus: the gateway phase passes every check
    of templates/gateway-signals.yml and every panel of gateway.json, counted exactly."""
    vllms = [fake_vllm(model=MODEL, capacity=SLOTS, delay=0.05) for _ in WORKER_HOSTS]
    node = fake_vllm(metrics="node")  # stands in for node_exporter: any /metrics will do
    gw = real_gateway(vllms)
    prom = real_prometheus(scrape_configs(vllms, node.instance, gw.metrics_instance))
    inv = inventory(tmp_path, vllms, node.port, prom, gw)

    r = run_postcheck("-i", str(inv), *fast_options())

    assert r.code == 0, r.out
    assert r.by_status("fail") == [], r.out
    label = f"{GATEWAY_HOST}/{MODEL}"
    [load] = r.checks("gateway.load", "pass")
    assert load["target"] == label
    assert "queue probe" in load["detail"] and "queue proven by Prometheus" in load["detail"]
    # every expectation of every gateway signal, so every signal id: on /metrics (but `up`,
    # which only Prometheus has) and through Prometheus
    signals = load_signals(TEMPLATES / "gateway-signals.yml")
    checked = {(c["name"], c["target"], c["status"]) for c in r.report["checks"]}
    for sig in signals.signals:
        for exp in sig.metrics:
            if exp.kind != "up":
                name = f"gateway.metrics.{sig.id}:{exp.selector}"
                assert (name, label, "pass") in checked, name
            name = f"gateway.prometheus.{sig.id}:{exp.selector}"
            assert (name, label, "pass") in checked, name
    # the gateway's dashboard: every panel query returned data from the real Prometheus
    gateway_dash = [c for c in r.checks("dashboard") if c["target"].startswith("gateway.json")]
    assert gateway_dash and all(c["status"] == "pass" for c in gateway_dash), gateway_dash
    # the figures of the load through the gateway, in the JSON report
    gateways = r.report["summary"]["gateways"]
    assert gateways["job"] == "gateway" and gateways["hosts"] == [GATEWAY_HOST]
    pool = gateways["loads"][label]
    assert pool["queue_probe"] and pool["proof"] == "Prometheus"
    assert pool["capacity"] == len(WORKER_HOSTS) * SLOTS
    assert pool["completions_ok"] == pool["completions_sent"] >= 6
    assert pool["invalid_4xx"] == pool["invalid_sent"] == 2
    assert pool["peaks"]["gateway_queue_depth"] > 0 and not pool["errors"]
    assert pool["other_traffic"] is None  # exact deltas, not lower bounds
    print(
        f"through the gateway: {pool['completions_sent']} completions + {pool['invalid_sent']} "
        f"invalid, {pool['in_flight']} in flight, queue proven after {pool['proven_after_s']} s"
    )


def test_no_gateways_group_skips_the_gateway_dashboard_real_prometheus(
    tmp_path: Path,
    fake_vllm: Callable[..., FakeVLLM],
    real_prometheus: Callable[[str], str],
    run_postcheck: Callable[..., Result],
) -> None:
    """Fake vLLMs and a real Prometheus, no gateway: no gateway load, and every query of
    gateway.json is skipped naming the gateways group (nothing exposes gateway_*)."""
    vllms = [fake_vllm(model=MODEL, capacity=SLOTS, delay=0.05) for _ in WORKER_HOSTS]
    node = fake_vllm(metrics="node")
    prom = real_prometheus(scrape_configs(vllms, node.instance, None))
    inv = inventory(tmp_path, vllms, node.port, prom, None)

    r = run_postcheck("-i", str(inv), *fast_options())

    assert r.code == 0, r.out
    assert r.by_status("fail") == [], r.out
    gateway_dash = [c for c in r.checks("dashboard") if c["target"].startswith("gateway.json")]
    assert gateway_dash
    for c in gateway_dash:
        assert c["status"] == "skip" and "no host in group gateways" in c["detail"], c
    assert not [c for c in r.report["checks"] if c["name"].startswith("gateway.")]
    assert r.report["summary"]["gateways"] == {"job": "gateway", "hosts": [], "loads": {}}
