"""What the scale benchmark and large fleets rely on: the lean keep-alive client, parsing
only the needed series, many fake workers in one asyncio process, a lagging fake Prometheus."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import Result
from fakes import FakePrometheus, FakeVLLM, HttpStateTarget, VLLMState

from postcheck.httpclient import KeepAlive, TransportError
from postcheck.promtext import parse


def test_parse_only_keeps_just_those_samples() -> None:
    text = VLLMState().exposition()
    names = {"vllm:num_requests_waiting", "vllm:e2e_request_latency_seconds_bucket"}

    full, some = parse(text), parse(text, only=names)

    assert len(full.samples) > 300  # vLLM-shaped: every family of the pinned release
    assert some.samples == [s for s in full.samples if s.name in names]
    assert len(some.samples) == 23


def test_keep_alive_reuses_and_describes_failures(fake_vllm: Callable[..., FakeVLLM]) -> None:
    v = fake_vllm()
    with KeepAlive(v.url, None, 2) as conn:
        status, body = conn.request("GET", "/version")
        first = conn.conn
        assert status == 200 and json.loads(body) == {"version": "0.32.0"}
        assert conn.request("GET", "/health")[0] == 200 and conn.conn is first
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransportError, match="connection refused"):
        KeepAlive(f"http://127.0.0.1:{port}", None, 2).request("GET", "/health")


@pytest.fixture
def fleet_process() -> Iterator[list[int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "postcheck.testing.aiofleet", "--count", "3", "--delay", "0.05"],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    yield json.loads(proc.stdout.readline())["ports"]
    proc.terminate()
    proc.wait(timeout=10)
    proc.stdout.close()


def test_aiofleet_and_lagging_prometheus_pass_the_postcheck(
    fleet_process: list[int],
    servers: list[object],
    run_postcheck: Callable[..., Result],
) -> None:
    targets = [HttpStateTarget(f"127.0.0.1:{p}", interval_s=0.3) for p in fleet_process]
    prom = FakePrometheus(node_targets=["127.0.0.1:9100"], targets=targets)
    prom.start()
    servers.append(prom)
    args = [a for p in fleet_process for a in ("--worker", f"http://127.0.0.1:{p},tiny")]

    start = time.monotonic()
    r = run_postcheck(
        *args,
        *("--prometheus", prom.url, "--scrape-interval", "0.3s", "--load-seconds", "0.5"),
        *("--node-exporter", "127.0.0.1:9100"),
        *("--requests", "4", "--concurrency", "4", "--timeout", "5"),
    )

    assert r.code == 0, r.out
    assert {c["name"] for c in r.by_status("skip")} <= {
        "dashboard",
        "grafana",
        "grafana.datasource",
        "grafana.dashboard",
    }
    print(f"3 workers, batched Prometheus checks: {time.monotonic() - start:.1f} s")
    assert len(r.checks("load", "pass")) == 3
    # the batched queries: one per expression shape a round, not one per instance
    assert any(q.startswith("sum by (instance) (") for q in prom.queries)
    assert not any('instance="' in q for q in prom.queries if not q.startswith("up"))
