"""The async load generator counts exactly what it sent, and sees the gauges, against a fake
vLLM."""

from __future__ import annotations

from collections.abc import Callable

from conftest import TEMPLATES
from fakes import FakeVLLM

from postcheck.fleet import Worker
from postcheck.load import LoadPlan, run_load, wave_pattern
from postcheck.signals import load_signals

GAUGES = ["vllm:num_requests_running", "vllm:num_requests_waiting"]
COUNTERS = [
    m
    for s in load_signals(TEMPLATES / "signals.yml").signals
    for m in s.metrics
    if m.kind == "counter_delta"
]


def test_wave_pattern_spreads_invalid_requests() -> None:
    assert wave_pattern(6, 2) == [False, False, False, True, False, False, False, True]
    assert wave_pattern(3, 0) == [False] * 3
    for n, k in ((24, 2), (1, 5), (7, 3)):
        p = wave_pattern(n, k)
        assert len(p) == n + k and sum(p) == k


def test_load_counts_exactly_against_fake_vllm(fake_vllm: Callable[..., FakeVLLM]) -> None:
    v = fake_vllm(capacity=2, delay=0.01)
    plan = LoadPlan(
        completions=5, invalid=1, in_flight=4, max_tokens=32, timeout_s=3, traffic_window_s=0.1
    )

    out = run_load(Worker("w", v.url, "tiny"), "tiny", plan, COUNTERS, GAUGES)

    r = out.result
    assert r.completions_sent >= 5 and r.invalid_sent == 1
    assert r.completions_ok == r.completions_sent == v.success["length"]
    assert r.invalid_4xx == r.invalid_sent == v.http[("/v1/completions", "POST", "4xx")]
    assert not r.errors and r.other_traffic is None
    # no Prometheus: the queue probe kept going until its /metrics polls saw both gauges
    assert r.peaks["vllm:num_requests_running"] > 0 and r.peaks["vllm:num_requests_waiting"] > 0
    assert r.proof == "/metrics polls" and r.proven_after_s is not None
    delta = out.after.sum("vllm:e2e_request_latency_seconds_count") - (
        out.before.sum("vllm:e2e_request_latency_seconds_count") or 0
    )
    assert delta == r.completions_ok
    # Load requests are fixed-length, so they hold batch slots and the queue fills.
    loads = [b for b in v.completion_bodies if b.get("model") == "tiny"]
    assert loads and all(b["max_tokens"] == 32 and b["ignore_eos"] is True for b in loads)


def test_counter_only_load_sends_exactly_the_asked_requests(
    fake_vllm: Callable[..., FakeVLLM],
) -> None:
    v = fake_vllm(capacity=4, delay=0.01)
    plan = LoadPlan(
        completions=7, invalid=3, in_flight=4, max_tokens=8, timeout_s=3, probe=False,
        traffic_window_s=0.1,
    )

    r = run_load(Worker("w", v.url, "tiny"), "tiny", plan, COUNTERS, GAUGES).result

    assert (r.completions_sent, r.completions_ok, r.invalid_sent, r.invalid_4xx) == (7, 7, 3, 3)
    assert r.polls == 0 and r.proven_after_s is None


def test_unknown_capacity_ramps_until_requests_wait_against_fake_vllm(
    fake_vllm: Callable[..., FakeVLLM],
) -> None:
    v = fake_vllm(capacity=20, delay=0.3)
    plan = LoadPlan(
        completions=2, invalid=0, in_flight=4, max_tokens=8, timeout_s=10, max_in_flight=64,
        ramp_s=0.5, traffic_window_s=0.1,
    )

    r = run_load(Worker("w", v.url, "tiny"), "tiny", plan, COUNTERS, GAUGES).result

    assert r.ramped[:4] == [4, 8, 16, 32] and r.in_flight == 32  # 32 > 20: requests waited
    assert r.capacity_seen == 20  # what the instance reported while requests waited
    assert not r.errors and r.completions_ok == r.completions_sent


def test_load_reports_failures_against_fake_vllm(fake_vllm: Callable[..., FakeVLLM]) -> None:
    v = fake_vllm(api_key="k")  # the load sends no key: every request is refused with 401
    plan = LoadPlan(
        completions=2, invalid=1, in_flight=2, max_tokens=32, timeout_s=3, traffic_window_s=0.1
    )

    r = run_load(Worker("w", v.url, "tiny"), "tiny", plan, [], GAUGES).result

    # the first error stops the closed loop; what was sent is still counted exactly
    assert r.completions_sent == r.completions_sent - r.completions_ok == sum(r.errors.values())
    assert r.invalid_sent == r.invalid_4xx
    assert set(r.errors) == {'completion answered HTTP 401: {"error": "Unauthorized"}'}
