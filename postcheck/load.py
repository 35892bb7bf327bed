"""The load: completions plus invalid requests against one vLLM instance, counted exactly.

Waves of `requests` completions and `invalid` invalid requests (interleaved) are sent by
`concurrency` threads without pause between waves, until at least `min_seconds` have
passed (so Prometheus scrapes the gauges mid-load). The calling thread polls /metrics
meanwhile (parsing only the gauges) to catch them above zero. Before and after, /metrics
is read once it has settled (vLLM may count a request just after answering it).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from postcheck.fleet import Worker
from postcheck.httpclient import KeepAlive, TransportError
from postcheck.promtext import Exposition
from postcheck.report import CheckFailed
from postcheck.signals import MetricExpectation
from postcheck.worker_checks import (
    METRICS_ACCEPT,
    completion_body,
    parse_metrics,
)

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
    # While completions succeed but the polls of /metrics have not yet seen every gauge above
    # 0, keep sending waves up to this much longer: on a busy controller loading hundreds of
    # instances a poll can come late and miss the queue (the check itself is unchanged).
    extend_s: float = 0.0


@dataclass
class LoadResult:
    completions_sent: int = 0
    completions_ok: int = 0
    invalid_sent: int = 0
    invalid_4xx: int = 0
    waves: int = 0
    extended: bool = False  # kept on past min_seconds until the gauges were seen
    started_at: float = 0.0  # wall clock (time.time())
    seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    peaks: dict[str, float] = field(default_factory=dict)
    polls: int = 0
    poll_errors: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        peaks = ", ".join(f"{k} {v:g}" for k, v in sorted(self.peaks.items()))
        extended = " (kept on until the gauges were seen)" if self.extended else ""
        return (
            f"{self.completions_sent} completions ({self.completions_ok} answered 200) + "
            f"{self.invalid_sent} invalid ({self.invalid_4xx} answered 4xx) in {self.waves} "
            f"wave(s), {self.seconds:.1f}s{extended}; peaks seen in {self.polls} polls of "
            f"/metrics: "
            f"{peaks or 'none'}"
        )

    def as_json(self) -> dict[str, object]:
        return {
            "completions_sent": self.completions_sent,
            "completions_ok": self.completions_ok,
            "invalid_sent": self.invalid_sent,
            "invalid_4xx": self.invalid_4xx,
            "waves": self.waves,
            "extended": self.extended,
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
    """Hands out jobs wave after wave until a wave ends after min_seconds (or, while
    `keep_going()` says so, until one ends after min_seconds + extend_s)."""

    def __init__(
        self,
        pattern: list[bool],
        min_seconds: float,
        extend_s: float = 0.0,
        keep_going: Callable[[], bool] = lambda: False,
    ) -> None:
        self._pattern = pattern
        self._min_seconds = min_seconds
        self._extend_s = extend_s
        self._keep_going = keep_going
        self._lock = threading.Lock()
        self._pos = 0
        self._start = time.monotonic()
        self.waves = 1
        self.extended = False

    def next(self) -> bool | None:
        with self._lock:
            if self._pos == len(self._pattern):
                elapsed = time.monotonic() - self._start
                if elapsed >= self._min_seconds:
                    if elapsed >= self._min_seconds + self._extend_s or not self._keep_going():
                        return None
                    self.extended = True
                self._pos = 0
                self.waves += 1
            job = self._pattern[self._pos]
            self._pos += 1
            return job


def _sum_of(expo: Exposition, exp: MetricExpectation) -> float:
    v = expo.sum(exp.name, exp.labels)
    return 0.0 if v is None else v


def settled_metrics(
    worker: Worker,
    counters: Sequence[MetricExpectation],
    gauges: Sequence[str],
    timeout_s: float,
    keep: Iterable[str] = (),
) -> Exposition:
    """/metrics once counters stopped moving between two reads and gauges are 0 (or it is late).

    Only the samples of the counters, the gauges and `keep` are parsed and kept: the signals
    need a few dozen of vLLM's ~500, and a large fleet holds two of these per instance.
    """
    start = time.monotonic()
    last: tuple[float, ...] | None = None
    names = {c.name for c in counters} | set(gauges) | set(keep)
    with KeepAlive(worker.base_url, worker.api_key, timeout_s) as conn:
        while True:
            try:
                status, data = conn.request("GET", "/metrics", headers={"Accept": METRICS_ACCEPT})
            except TransportError as exc:
                raise CheckFailed(f"/metrics: {exc}") from None
            expo = parse_metrics(status, data.decode("utf-8", "replace"), names)
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
    keep: Iterable[str] = (),
) -> LoadOutcome:
    """Load one instance; `keep`: more sample names the before/after reads keep."""
    before = settled_metrics(worker, counters, gauges, plan.timeout_s, keep)
    result = LoadResult(peaks={g: 0.0 for g in gauges})
    lock = threading.Lock()

    def gauges_unseen() -> bool:
        """True while completions succeed and some gauge was never polled above 0."""
        with lock:
            working = result.completions_ok > 0 and not result.errors
            return working and any(result.peaks[g] <= 0 for g in gauges)

    dispenser = _Dispenser(
        wave_pattern(plan.requests, plan.invalid), plan.min_seconds, plan.extend_s, gauges_unseen
    )
    running = [plan.concurrency]  # senders not finished yet
    senders_done = threading.Event()

    def sender_finished() -> None:
        with lock:
            running[0] -= 1
            if running[0] == 0:
                senders_done.set()

    def poll_once(conn: KeepAlive) -> None:
        try:
            status, data = conn.request("GET", "/metrics", headers={"Accept": METRICS_ACCEPT})
            expo = parse_metrics(status, data.decode("utf-8", "replace"), gauges)
        except (CheckFailed, TransportError) as exc:
            with lock:
                result.poll_errors[str(exc)] += 1
            return
        with lock:
            result.polls += 1
            for g in gauges:
                v = expo.sum(g)
                if v is not None and not math.isnan(v):
                    result.peaks[g] = max(result.peaks[g], v)

    def sender() -> None:
        try:
            send_all()
        finally:
            sender_finished()

    bodies = {
        flag: json.dumps(
            completion_body(INVALID_MODEL if flag else model, plan.max_tokens)
        ).encode()
        for flag in (False, True)
    }
    json_type = {"Content-Type": "application/json"}

    def send_all() -> None:
        with KeepAlive(worker.base_url, worker.api_key, plan.timeout_s) as conn:
            while (invalid := dispenser.next()) is not None:
                with lock:
                    if invalid:
                        result.invalid_sent += 1
                    else:
                        result.completions_sent += 1
                try:
                    code, data = conn.request("POST", "/v1/completions", bodies[invalid], json_type)
                except TransportError as exc:
                    with lock:
                        result.errors[str(exc)] += 1
                    continue
                with lock:
                    if invalid and 400 <= code < 500:
                        result.invalid_4xx += 1
                    elif not invalid and code == 200:
                        result.completions_ok += 1
                    elif invalid:
                        result.errors[f"invalid request answered HTTP {code}, not 4xx"] += 1
                    else:
                        text = data.decode("utf-8", "replace")[:120]
                        result.errors[f"completion answered HTTP {code}: {text}"] += 1

    result.started_at = time.time()
    t0 = time.monotonic()
    senders = [
        threading.Thread(target=sender, name=f"load {worker.label} #{i}", daemon=True)
        for i in range(plan.concurrency)
    ]
    started: list[threading.Thread] = []
    for t in senders:
        try:
            t.start()
        except RuntimeError as exc:  # "can't start new thread": out of threads or memory
            with lock:
                result.errors[f"cannot start a load thread: {exc}"] += 1
            sender_finished()
        else:
            started.append(t)
    # This thread polls /metrics meanwhile (after the senders start: the first poll already
    # sees requests), until the last sender is done.
    with KeepAlive(worker.base_url, worker.api_key, plan.timeout_s) as conn:
        while not senders_done.is_set():
            poll_once(conn)
            senders_done.wait(plan.poll_interval_s)
    for t in started:
        t.join()
    result.seconds = time.monotonic() - t0
    result.waves = dispenser.waves
    result.extended = dispenser.extended
    after = settled_metrics(worker, counters, gauges, plan.timeout_s, keep)
    return LoadOutcome(before=before, after=after, result=result)
