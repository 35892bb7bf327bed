"""The load generator counts exactly what it sent, and sees the gauges, against a fake vLLM."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from conftest import TEMPLATES
from fakes import FakeVLLM

from postcheck.fleet import Worker
from postcheck.load import LoadPlan, run_load, wave_pattern
from postcheck.signals import load_signals

GAUGES = ["vllm:num_requests_running", "vllm:num_requests_waiting"]


def test_wave_pattern_spreads_invalid_requests() -> None:
    assert wave_pattern(6, 2) == [False, False, False, True, False, False, False, True]
    assert wave_pattern(3, 0) == [False] * 3
    for n, k in ((24, 2), (1, 5), (7, 3)):
        p = wave_pattern(n, k)
        assert len(p) == n + k and sum(p) == k


def test_load_counts_exactly_against_fake_vllm(fake_vllm: Callable[..., FakeVLLM]) -> None:
    v = fake_vllm(capacity=2, delay=0.01)
    counters = [
        m
        for s in load_signals(TEMPLATES / "signals.yml").signals
        for m in s.metrics
        if m.kind == "counter_delta"
    ]
    plan = LoadPlan(
        requests=5, concurrency=4, invalid=1, min_seconds=0.3, max_tokens=32, timeout_s=3
    )

    out = run_load(Worker("w", v.url, "tiny"), "tiny", plan, counters, GAUGES)

    r = out.result
    assert r.waves >= 1 and r.completions_sent == 5 * r.waves and r.invalid_sent == r.waves
    assert r.completions_ok == r.completions_sent == v.success["length"]
    assert r.invalid_4xx == r.invalid_sent == v.http[("/v1/completions", "POST", "4xx")]
    assert not r.errors and r.seconds >= 0.3
    assert r.peaks["vllm:num_requests_running"] > 0 and r.peaks["vllm:num_requests_waiting"] > 0
    delta = out.after.sum("vllm:e2e_request_latency_seconds_count") - (
        out.before.sum("vllm:e2e_request_latency_seconds_count") or 0
    )
    assert delta == r.completions_ok
    # Load requests are long and fixed-length, so they hold batch slots and the queue fills.
    loads = [b for b in v.completion_bodies if b.get("model") == "tiny"]
    assert loads and all(b["max_tokens"] == 32 and b["ignore_eos"] is True for b in loads)


def test_load_reports_failures_against_fake_vllm(
    fake_vllm: Callable[..., FakeVLLM], tmp_path: Path
) -> None:
    v = fake_vllm(api_key="k")  # the load sends no key: every request is refused with 401
    plan = LoadPlan(
        requests=2, concurrency=2, invalid=1, min_seconds=0, max_tokens=32, timeout_s=3
    )

    r = run_load(Worker("w", v.url, "tiny"), "tiny", plan, [], GAUGES).result

    assert (r.completions_sent, r.completions_ok, r.invalid_sent, r.invalid_4xx) == (2, 0, 1, 1)
    assert r.errors == {'completion answered HTTP 401: {"error": "Unauthorized"}': 2}
