"""The gateway tier's faults on the converged demo lab, under a real load through lab-gw1.

lab-gw1 pools the worker's two real vLLM instances (tiny, tiny-b: 4 slots each, a queue of
8; inventory/lab). Each test keeps a steady load of clients going through the gateway while
something breaks: a worker is killed, the queue overflows, the gateway gets SIGTERM, and
site.yml rolls a changed engine argument over both instances. Every client request is
recorded (start, end, status), and what the clients saw is compared with the gateway's own
counters: exactly, not roughly. Figures are printed (the note reports them), never timed.
Runs after test_site.py on the same lab; alone, it converges first.
"""
from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from postcheck.promtext import Exposition, parse

from .conftest import WORKER, http, lab_group_vars, playbook, ssh, wait_for, wait_vllm_serving

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("demo-lab")]

GATEWAY_HOST = "10.231.0.12"
API = f"http://{GATEWAY_HOST}:8000"
METRICS = f"http://{GATEWAY_HOST}:8080/metrics"
MODEL = "tiny-llama"
WORKERS = ("lab-worker1/tiny", "lab-worker1/tiny-b")
CAPACITY, QUEUE_SIZE = 8, 8  # 2 instances x max-num-seqs 4; gateway_queue_size


def scrape() -> Exposition:
    r = http().get(METRICS, timeout=5)
    r.raise_for_status()
    return parse(r.text)


def value(expo: Exposition, name: str, **labels: str) -> float:
    return expo.sum(name, labels) or 0.0


def worker_up(expo: Exposition, worker: str) -> float:
    return value(expo, "gateway_worker_up", worker=worker)


def gateway_events(since: float) -> list[dict[str, object]]:
    """The gateway's JSON log records since a wall-clock time (whole seconds, rounded down)."""
    lines = ssh(GATEWAY_HOST, f"journalctl --unit vllm-gateway --since @{int(since)} "
                "--output cat --no-pager")
    events = []
    for line in lines.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            events.append(entry)
    return events


def all_ready(workers: tuple[str, ...] = WORKERS) -> bool:
    try:
        expo = scrape()
    except requests.RequestException:
        return False
    return all(worker_up(expo, w) == 1 for w in workers)


@dataclass
class Call:
    start: float
    end: float
    code: int  # 0: no HTTP answer (connection refused or cut)
    error: str = ""
    retry_after: str | None = None


@dataclass
class Load:
    """`clients` threads, each sending one completion after another until stopped."""

    clients: int
    max_tokens: int = 8
    calls: list[Call] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        self.threads = [threading.Thread(target=self.client, daemon=True)
                        for _ in range(self.clients)]
        for t in self.threads:
            t.start()
        return self

    def finish(self) -> None:
        """Stop sending; return once every client's last request is answered."""
        self.stop.set()
        for t in self.threads:
            t.join(timeout=200)

    def one(self, session: requests.Session) -> Call:
        start = time.monotonic()
        body = {"model": MODEL, "prompt": "Hello", "max_tokens": self.max_tokens,
                "ignore_eos": True}
        try:
            r = session.post(f"{API}/v1/completions", json=body, timeout=180)
        except requests.RequestException as exc:
            return Call(start, time.monotonic(), 0, type(exc).__name__)
        error = "" if r.status_code == 200 else r.text[:200]
        return Call(start, time.monotonic(), r.status_code, error, r.headers.get("Retry-After"))

    def client(self) -> None:
        session = http()
        while not self.stop.is_set():
            call = self.one(session)
            self.calls.append(call)
            if call.code != 200:
                time.sleep(0.1)  # a refused client backs off a little, as clients do

    @property
    def failed(self) -> list[Call]:
        return [c for c in self.calls if c.code != 200]


@pytest.fixture
def steady_load() -> Iterator[Load]:
    """Six clients through the gateway (fewer than its 8 slots: nothing waits in its queue)."""
    load = Load(clients=6).start()
    yield load
    load.finish()


def latency_text(calls: list[Call]) -> str:
    ok = sorted(c.end - c.start for c in calls if c.code == 200)
    if not ok:
        return "no successful request"
    p99 = ok[min(len(ok) - 1, int(0.99 * len(ok)))]
    return (f"{len(ok)} answered 200: p50 {statistics.median(ok) * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms, max {ok[-1] * 1000:.0f} ms")


@pytest.fixture(scope="module")
def gateway_ready(converged: dict[str, object]) -> dict[str, object]:
    wait_vllm_serving("vllm-tiny serving", timeout=240)
    wait_for("the gateway reports both workers ready", all_ready, timeout=240, every=1)
    return converged


def test_a_worker_killed_mid_load_fails_only_its_in_flight_requests(
    gateway_ready: dict[str, object], steady_load: Load
) -> None:
    time.sleep(5)  # both workers busy
    before = scrape()
    # The lab's hosts share the machine's clock: the worker's time of the kill, and the
    # controller's when the gateway's /metrics first shows tiny-b down.
    killed = float(ssh(WORKER, "date +%s.%N; systemctl kill --signal=SIGKILL vllm-tiny-b"))
    wait_for("gateway_worker_up of tiny-b reads 0",
             lambda: worker_up(scrape(), "lab-worker1/tiny-b") == 0, timeout=10, every=0.05)
    down_at, down = time.monotonic(), time.time() - killed
    time.sleep(10)  # new requests meanwhile: all to tiny
    steady_load.finish()
    time.sleep(1)
    after = scrape()
    failed = steady_load.failed
    late = [c for c in steady_load.calls if c.start > down_at]
    print(f"kill -9 of tiny-b: gateway_worker_up 0 after {down:.2f} s; {len(failed)} failed "
          f"of {len(steady_load.calls)} requests; after the gateway saw it: "
          f"{latency_text(late)}")
    # The mechanism, not a time: the cut connection itself marked tiny-b down (the request
    # path's worker_marked_down, cause disconnect or connect), not a later health round.
    marked = [e for e in gateway_events(killed)
              if e.get("event") == "worker_marked_down" and e.get("worker") == "lab-worker1/tiny-b"]
    assert marked and marked[0].get("cause") in ("disconnect", "connect"), marked
    # Only requests in flight on tiny-b when it died fail: none started after the gateway
    # marked it down, and no more than its 4 slots.
    assert all(c.start <= down_at for c in failed), failed
    assert len(late) > 10 and all(c.code == 200 for c in late)
    assert 1 <= len(failed) <= 4, failed
    assert all(c.code == 502 for c in failed), failed

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Counted exactly: every failure once, as upstream_disconnect, and as a 502.
    assert delta("gateway_errors_total", reason="upstream_disconnect") == len(failed)
    assert delta("gateway_errors_total") == len(failed)
    assert delta("gateway_requests_total", code="502") == len(failed)
    # systemd brings tiny-b back; the gateway routes to it again after its rise checks.
    wait_for("tiny-b ready again in the gateway", all_ready, timeout=240, every=1)


def test_queue_overflow_is_answered_429_and_counted_exactly(
    gateway_ready: dict[str, object]
) -> None:
    """40 requests at once at 8 slots + a queue of 8: the rest get 429 with Retry-After."""
    before = scrape()
    load = Load(clients=0, max_tokens=32)
    with ThreadPoolExecutor(max_workers=40) as pool:
        calls = list(pool.map(lambda _: load.one(http()), range(40)))
    time.sleep(1)
    after = scrape()
    rejected = [c for c in calls if c.code == 429]
    print(f"overflow: {len(rejected)} of 40 answered 429, "
          f"{len([c for c in calls if c.code == 200])} answered 200")
    # At most 16 are held (8 slots + 8 queued); a few more get in as the first ones finish.
    assert len(rejected) >= 8, calls
    assert all(c.code in (200, 429) for c in calls), [c for c in calls if c.code not in (200, 429)]
    assert all(c.retry_after for c in rejected)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("gateway_requests_total", code="429") == len(rejected)
    assert delta("gateway_errors_total", reason="queue_full") == len(rejected)
    assert delta("gateway_errors_total") == len(rejected)
    assert delta("gateway_requests_total", code="200") == 40 - len(rejected)
    assert delta("gateway_request_latency_seconds_count") == 40 - len(rejected)


def test_sigterm_under_load_finishes_in_flight_requests_then_serves_again(
    gateway_ready: dict[str, object]
) -> None:
    load = Load(clients=6, max_tokens=64).start()
    time.sleep(5)
    term_at = time.monotonic()
    # SIGTERM, then a new process; Type=notify: it returns once the new one routes.
    ssh(GATEWAY_HOST, "systemctl restart vllm-gateway")
    restarted = time.monotonic() - term_at
    time.sleep(3)
    load.finish()
    in_flight = [c for c in load.calls if c.start < term_at and c.end > term_at]
    refused = [c for c in load.calls if c.code != 200]
    after = [c for c in load.calls if c.start > term_at + restarted]
    print(f"SIGTERM under load: {len(in_flight)} in flight at SIGTERM, all answered "
          f"{sorted({c.code for c in in_flight})}; restart took {restarted:.1f} s; "
          f"{len(refused)} requests meanwhile refused (503 or no connection)")
    assert in_flight and all(c.code == 200 for c in in_flight), in_flight
    assert all(c.start > term_at for c in refused), refused
    assert all(c.code in (0, 503) for c in refused), refused
    assert after and all(c.code == 200 for c in after)


def drain_events(since: float) -> list[tuple[str, str]]:
    """(event, worker) of the gateway's drain and undrain log lines since a wall-clock time."""
    return [(str(e["event"]), str(e["worker"])) for e in gateway_events(since)
            if e.get("event") in ("worker_drain", "worker_undrain")]


def test_rolling_upgrade_under_load_fails_no_request(
    gateway_ready: dict[str, object], steady_load: Load, tmp_path: Path
) -> None:
    """A changed engine argument, site.yml re-run while clients load the gateway: the vllm
    role drains each instance at the gateway, restarts it, waits for it, takes it back, then
    the next one. Goal: no client request fails."""
    time.sleep(5)
    baseline = list(steady_load.calls)
    started, wall = time.monotonic(), time.time()
    extra = tmp_path / "upgrade.json"
    # inventory/lab's arguments, and a seed
    args = {**lab_group_vars("gpu_workers")["vllm_engine_args"], "seed": 1234}
    extra.write_text(json.dumps({"vllm_engine_args": args}))
    try:
        # The workers' tier (--limit gpu_workers: the monitoring and gateway plays have
        # nothing to change, and under this load on the lab's two cores they take minutes).
        playbook("site.yml", "-e", f"@{extra}", "--limit", "gpu_workers",
                 "--skip-tags", "postcheck")
        took = time.monotonic() - started
        steady_load.finish()
        during = [c for c in steady_load.calls if c.start >= started]
        print(f"rolling upgrade through the gateway: site.yml {took:.0f} s; "
              f"{len(steady_load.failed)} failed of {len(during)} requests during it; "
              f"before: {latency_text(baseline)}; during: {latency_text(during)}")
        events = drain_events(wall - 2)
        # One instance at a time: each drained, then taken back, before the next is drained.
        pairs = [(events[i], events[i + 1]) for i in range(0, len(events) - 1, 2)]
        assert len(events) == 4 and all(
            d == ("worker_drain", w) and u == ("worker_undrain", w) for d, u in pairs
            for w in [d[1]]), events
        assert sorted(d[1] for d, _ in pairs) == sorted(WORKERS), events
        assert steady_load.failed == [], steady_load.failed[:5]
    finally:
        steady_load.finish()
        # Back to the inventory's arguments (the same drained restarts; no load now).
        playbook("site.yml", "--limit", "gpu_workers", "--skip-tags", "postcheck")
        wait_for("the gateway reports both workers ready", all_ready, timeout=120, every=1)
