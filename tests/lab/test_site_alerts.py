"""Alerts delivered end to end on the converged demo lab (#16): the real Prometheus and the
real Alertmanager of lab-mon1, a stopped vLLM instance, and a webhook test receiver on the
controller (a stdlib HTTP server on the lab bridge's address, where inventory/lab routes
every alert). Runs after test_site.py on the same lab (site.yml converged there); alone, it
converges first. The lab's VllmInstanceDown fires after 20 s (production: 10m).
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from .conftest import MONITOR, PROMETHEUS, WORKER, http, ssh, wait_for, wait_vllm_serving

# The demo lab's tests run in order on one test worker (Makefile: --dist loadgroup).
pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("demo-lab")]

# inventory/lab routes every alert to lab-test-receiver, the Watchdog to lab-test-heartbeat.
RECEIVER_ADDRESS = ("10.231.0.1", 19093)
ALERTMANAGER = f"http://{MONITOR}:9093"


@dataclass
class Received:
    at: float  # time.monotonic()
    path: str
    body: dict[str, Any]
    answered: int


@dataclass
class WebhookTestReceiver:
    """Webhook test receiver: records every POST; answers 500 while `failing`."""

    failing: bool = False
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                status = 500 if receiver.failing else 200
                with receiver.lock:
                    receiver.received.append(Received(time.monotonic(), self.path, body, status))
                self.send_response(status)
                self.end_headers()

        return Handler

    def matching(self, since: float, ok: Callable[[Received], bool]) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.at >= since and ok(r)]


@pytest.fixture(scope="module")
def receiver(converged: dict[str, object]) -> Iterator[WebhookTestReceiver]:
    rec = WebhookTestReceiver()
    server = ThreadingHTTPServer(RECEIVER_ADDRESS, rec.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def healthy(converged: dict[str, object]) -> None:
    """vllm-tiny serving, and Prometheus has seen every instance up since: no VllmInstanceDown
    pending or firing. A test that stopped an instance just before (test_site.py's last one)
    may leave the alert firing if the instance came back between two scrapes; Alertmanager
    has then notified it already, and sends nothing new when the next stop fires it again."""
    wait_vllm_serving("vllm-tiny serving", timeout=240)

    def clean() -> bool:
        up = query('min(up{job="vllm"})')
        return bool(up) and up[0]["value"][1] == "1" and not query(
            'ALERTS{alertname="VllmInstanceDown"}')

    wait_for("every vLLM instance up in Prometheus, VllmInstanceDown not pending or firing",
             clean, timeout=90, every=1)


def query(expr: str) -> list[dict[str, Any]]:
    body = http().get(f"{PROMETHEUS}/api/v1/query", params={"query": expr}, timeout=10).json()
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def instance_down(status: str, answered: int = 200) -> Callable[[Received], bool]:
    """A notification of lab-test-receiver with VllmInstanceDown in this status."""
    def ok(r: Received) -> bool:
        return (r.path == "/alerts" and r.answered == answered
                and any(a["labels"].get("alertname") == "VllmInstanceDown"
                        and a["status"] == status for a in r.body.get("alerts", [])))
    return ok


def the_alert(r: Received) -> dict[str, Any]:
    alerts = [a for a in r.body["alerts"] if a["labels"]["alertname"] == "VllmInstanceDown"]
    assert len(alerts) == 1, r.body
    return alerts[0]


def stop_vllm() -> float:
    start = time.monotonic()
    ssh(WORKER, "systemctl stop vllm-tiny")
    return start


def start_vllm() -> float:
    ssh(WORKER, "systemctl start vllm-tiny")
    wait_vllm_serving("vllm-tiny serving after start", timeout=240)
    return time.monotonic()


def test_watchdog_reaches_alertmanager_and_the_heartbeat_receiver(
    receiver: WebhookTestReceiver,
) -> None:
    def at_alertmanager() -> bool:
        alerts = http().get(f"{ALERTMANAGER}/api/v2/alerts",
                            params={"filter": 'alertname="Watchdog"'}, timeout=5).json()
        return len(alerts) == 1
    # Sent again within Prometheus's one-minute resend delay after a restart.
    took = wait_for("Watchdog at lab-mon1's Alertmanager", at_alertmanager, timeout=90)
    print(f"Watchdog at the Alertmanager after {took:.1f} s")
    since = time.monotonic()

    def beat(r: Received) -> bool:
        return r.path == "/heartbeat" and r.answered == 200
    # The heartbeat repeats every 30 s in the lab.
    wait_for("a heartbeat", lambda: bool(receiver.matching(since, beat)), timeout=90)
    body = receiver.matching(since, beat)[0].body
    assert body["receiver"] == "lab-test-heartbeat"
    assert [a["labels"]["alertname"] for a in body["alerts"]] == ["Watchdog"]
    assert "replica" not in body["alerts"][0]["labels"], "the HA replica label reached Alertmanager"


def test_stopped_instance_alerts_the_receiver_then_resolves(receiver: WebhookTestReceiver) -> None:
    stopped = stop_vllm()
    try:
        took = wait_for("VllmInstanceDown at the receiver",
                        lambda: bool(receiver.matching(stopped, instance_down("firing"))),
                        timeout=150)
        print(f"vLLM stopped -> firing notification: {took:.1f} s "
              "(scrape 5 s, for 20 s, evaluation 5 s, group_wait 5 s)")
        first = receiver.matching(stopped, instance_down("firing"))[0]
        labels = the_alert(first)["labels"]
        assert first.body["receiver"] == "lab-test-receiver"
        assert labels["severity"] == "critical" and labels["job"] == "vllm"
        assert labels["host"] == "lab-worker1" and labels["vllm_instance"] == "tiny"
        assert labels["model_name"] == "tiny-llama" and labels["instance"] == f"{WORKER}:8000"
    finally:
        started = start_vllm()
    took = wait_for("VllmInstanceDown resolved at the receiver",
                    lambda: bool(receiver.matching(started, instance_down("resolved"))),
                    timeout=120)
    print(f"vLLM serving again -> resolved notification: {took:.1f} s")
    assert the_alert(receiver.matching(started, instance_down("resolved"))[0])["endsAt"]


def test_a_receiver_answering_500_gets_the_alert_after_it_recovers(
    receiver: WebhookTestReceiver,
) -> None:
    receiver.failing = True
    stopped = stop_vllm()
    try:
        try:
            # Refused twice or more: Alertmanager retries.
            wait_for("VllmInstanceDown refused twice by the failing receiver",
                     lambda: len(receiver.matching(stopped, instance_down("firing", 500))) >= 2,
                     timeout=180)
            time.sleep(15)
        finally:
            receiver.failing = False
        recovered = time.monotonic()
        refused = len(receiver.matching(stopped, instance_down("firing", 500)))
        took = wait_for("VllmInstanceDown delivered after the receiver recovered",
                        lambda: bool(receiver.matching(recovered, instance_down("firing"))),
                        timeout=60)
        print(f"receiver answered 500 to {refused} attempts over "
              f"{recovered - stopped:.0f} s; delivered {took:.1f} s after it recovered")
        assert the_alert(receiver.matching(recovered, instance_down("firing"))[0])[
            "labels"]["vllm_instance"] == "tiny"
    finally:
        # Whatever failed above: the next tests need the instance back.
        started = start_vllm()
    wait_for("VllmInstanceDown resolved after the outage",
             lambda: bool(receiver.matching(started, instance_down("resolved"))), timeout=120)
