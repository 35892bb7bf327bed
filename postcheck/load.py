"""The load: completions plus invalid requests against one vLLM instance, counted exactly.

Waves of `requests` completions and `invalid` invalid requests (interleaved) are sent by
`concurrency` threads without pause between waves, until at least `min_seconds` have
passed (so Prometheus scrapes the gauges mid-load). A thread polls /metrics meanwhile to
catch the gauges above zero. Before and after, /metrics is read once it has settled (vLLM
may count a request just after answering it).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import requests

from postcheck.fleet import Worker
from postcheck.httpclient import describe_error, session
from postcheck.promtext import Exposition
from postcheck.report import CheckFailed
from postcheck.signals import MetricExpectation
from postcheck.worker_checks import completion, fetch_metrics

INVALID_MODEL = "postcheck-no-such-model"
SETTLE_INTERVAL_S = 0.25
SETTLE_MAX_S = 10.0
GAUGES_ZERO_WAIT_S = 2.0  # stop waiting for idle gauges after this (they may be stale)


@dataclass(frozen=True)
class LoadPlan:
    requests: int
    concurrency: int
    invalid: int
    min_seconds: float
    max_tokens: int
    timeout_s: float
    poll_interval_s: float = 0.2


@dataclass
class LoadResult:
    completions_sent: int = 0
    completions_ok: int = 0
    invalid_sent: int = 0
    invalid_4xx: int = 0
    waves: int = 0
    started_at: float = 0.0  # wall clock (time.time())
    seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    peaks: dict[str, float] = field(default_factory=dict)
    polls: int = 0
    poll_errors: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        peaks = ", ".join(f"{k} {v:g}" for k, v in sorted(self.peaks.items()))
        return (
            f"{self.completions_sent} completions ({self.completions_ok} answered 200) + "
            f"{self.invalid_sent} invalid ({self.invalid_4xx} answered 4xx) in {self.waves} "
            f"wave(s), {self.seconds:.1f}s; peaks seen in {self.polls} polls of /metrics: "
            f"{peaks or 'none'}"
        )

    def as_json(self) -> dict[str, object]:
        return {
            "completions_sent": self.completions_sent,
            "completions_ok": self.completions_ok,
            "invalid_sent": self.invalid_sent,
            "invalid_4xx": self.invalid_4xx,
            "waves": self.waves,
            "seconds": round(self.seconds, 3),
            "errors": dict(self.errors),
            "peaks": self.peaks,
            "polls": self.polls,
            "poll_errors": dict(self.poll_errors),
        }


@dataclass
class LoadOutcome:
    before: Exposition
    after: Exposition
    result: LoadResult


def wave_pattern(completions: int, invalid: int) -> list[bool]:
    """True marks an invalid request; the invalid ones spread evenly through the wave."""
    total = completions + invalid
    return [(j + 1) * invalid // total > j * invalid // total for j in range(total)]


class _Dispenser:
    """Hands out jobs wave after wave until a wave ends after min_seconds."""

    def __init__(self, pattern: list[bool], min_seconds: float) -> None:
        self._pattern = pattern
        self._min_seconds = min_seconds
        self._lock = threading.Lock()
        self._pos = 0
        self._start = time.monotonic()
        self.waves = 1

    def next(self) -> bool | None:
        with self._lock:
            if self._pos == len(self._pattern):
                if time.monotonic() - self._start >= self._min_seconds:
                    return None
                self._pos = 0
                self.waves += 1
            job = self._pattern[self._pos]
            self._pos += 1
            return job


def _sum_of(expo: Exposition, exp: MetricExpectation) -> float:
    v = expo.sum(exp.name, exp.labels)
    return 0.0 if v is None else v


def settled_metrics(
    worker: Worker, counters: Sequence[MetricExpectation], gauges: Sequence[str], timeout_s: float
) -> Exposition:
    """/metrics once counters stopped moving between two reads and gauges are 0 (or it is late)."""
    start = time.monotonic()
    last: tuple[float, ...] | None = None
    with session(worker.api_key) as s:
        while True:
            expo = fetch_metrics(s, worker, timeout_s)
            now = tuple(_sum_of(expo, c) for c in counters)
            idle = all((expo.sum(g) or 0.0) == 0 for g in gauges)
            waited = time.monotonic() - start
            if now == last and (idle or waited >= GAUGES_ZERO_WAIT_S):
                return expo
            if waited >= SETTLE_MAX_S:
                return expo
            last = now
            time.sleep(SETTLE_INTERVAL_S)


def run_load(
    worker: Worker,
    model: str,
    plan: LoadPlan,
    counters: Sequence[MetricExpectation],
    gauges: Sequence[str],
) -> LoadOutcome:
    before = settled_metrics(worker, counters, gauges, plan.timeout_s)
    result = LoadResult(peaks={g: 0.0 for g in gauges})
    lock = threading.Lock()
    dispenser = _Dispenser(wave_pattern(plan.requests, plan.invalid), plan.min_seconds)
    stop = threading.Event()

    def poller() -> None:
        with session(worker.api_key) as s:
            while not stop.is_set():
                try:
                    expo = fetch_metrics(s, worker, plan.timeout_s)
                except (CheckFailed, requests.RequestException) as exc:
                    text = (
                        describe_error(exc)
                        if isinstance(exc, requests.RequestException)
                        else str(exc)
                    )
                    with lock:
                        result.poll_errors[text] += 1
                else:
                    with lock:
                        result.polls += 1
                        for g in gauges:
                            v = expo.sum(g)
                            if v is not None and not math.isnan(v):
                                result.peaks[g] = max(result.peaks[g], v)
                stop.wait(plan.poll_interval_s)

    def sender() -> None:
        with session(worker.api_key) as s:
            while (invalid := dispenser.next()) is not None:
                with lock:
                    if invalid:
                        result.invalid_sent += 1
                    else:
                        result.completions_sent += 1
                try:
                    resp = completion(
                        s,
                        worker,
                        INVALID_MODEL if invalid else model,
                        plan.timeout_s,
                        max_tokens=plan.max_tokens,
                    )
                except requests.RequestException as exc:
                    with lock:
                        result.errors[describe_error(exc)] += 1
                    continue
                code = resp.status_code
                with lock:
                    if invalid and 400 <= code < 500:
                        result.invalid_4xx += 1
                    elif not invalid and code == 200:
                        result.completions_ok += 1
                    elif invalid:
                        result.errors[f"invalid request answered HTTP {code}, not 4xx"] += 1
                    else:
                        result.errors[f"completion answered HTTP {code}: {resp.text[:120]}"] += 1

    result.started_at = time.time()
    t0 = time.monotonic()
    poll_thread = threading.Thread(target=poller, name=f"poll {worker.label}", daemon=True)
    senders = [
        threading.Thread(target=sender, name=f"load {worker.label} #{i}", daemon=True)
        for i in range(plan.concurrency)
    ]
    for t in senders:
        t.start()
    poll_thread.start()  # after the senders: its first poll already sees requests
    for t in senders:
        t.join()
    result.seconds = time.monotonic() - t0
    result.waves = dispenser.waves
    stop.set()
    poll_thread.join()
    after = settled_metrics(worker, counters, gauges, plan.timeout_s)
    return LoadOutcome(before=before, after=after, result=result)
