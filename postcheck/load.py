"""The load: completions plus invalid requests against every vLLM instance, counted exactly.

All instances are loaded from one asyncio event loop (aiohttp, a connection pool per instance
limited to what its load keeps in flight): 200 instances x 260 requests in flight are 52,000
coroutines, not 52,000 threads.

Per instance:
  1. /metrics is read twice, `traffic_window_s` apart: counters that moved (or gauges above
     0) mean other traffic, and the counter checks become lower bounds.
  2. `in_flight` senders keep that many requests outstanding: the first `completions +
     invalid` requests follow wave_pattern (the invalid ones spread among them); a queue
     probe then keeps sending completions until its gauges are proven (seen above 0 on
     /metrics and, with Prometheus, scraped above 0: QueueWatch), its first error, or the
     deadline. No request outlives the deadline. Where the capacity is not known, the load
     doubles `in_flight` while the queue stays empty (the instance's gauges report it).
  3. /metrics is read once settled (vLLM may count a request just after answering it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from postcheck.fleet import Worker
from postcheck.httpclient import USER_AGENT, describe_os_error
from postcheck.promtext import Exposition
from postcheck.report import CheckFailed
from postcheck.signals import MetricExpectation
from postcheck.worker_checks import METRICS_ACCEPT, completion_body, parse_metrics

INVALID_MODEL = "postcheck-no-such-model"
QUEUE_GAUGE = "vllm:num_requests_waiting"
RUNNING_GAUGE = "vllm:num_requests_running"
SETTLE_INTERVAL_S = 0.25
SETTLE_MAX_S = 10.0
GAUGES_ZERO_WAIT_S = 2.0  # stop waiting for idle gauges after this (they may be stale)
METRICS_TIMEOUT_S = 10.0
DEADLINE_TEXT = "no answer before the load deadline"


@dataclass(frozen=True)
class LoadPlan:
    """One instance's load."""

    completions: int  # at least this many completions
    invalid: int  # exactly this many invalid requests (unknown model: answered 404)
    in_flight: int  # requests kept outstanding
    max_tokens: int
    timeout_s: float  # one request
    probe: bool = True  # keep the queue filled until its gauges are proven
    max_in_flight: int = 0  # where the capacity is unknown: ramp up to this; 0: no ramp
    ramp_s: float = 1.0  # seconds at a level without a queue before doubling it
    min_seconds: float = 0.0
    poll_interval_s: float = 0.2
    traffic_window_s: float = 2.0


@dataclass
class LoadResult:
    completions_sent: int = 0
    completions_ok: int = 0
    invalid_sent: int = 0
    invalid_4xx: int = 0
    answered_5xx: int = 0  # of the post-check's own requests (errors it caused)
    in_flight: int = 0  # the last level
    ramped: list[int] = field(default_factory=list)  # levels the ramp went through
    capacity_seen: float | None = None  # num_requests_running while requests waited
    proven_after_s: float | None = None  # when the queue probe's gauges were proven
    proof: str = ""  # what proved them
    started_at: float = 0.0  # wall clock (time.time())
    seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    peaks: dict[str, float] = field(default_factory=dict)
    polls: int = 0
    poll_errors: Counter[str] = field(default_factory=Counter)
    other_traffic: str | None = None  # why the counter checks are lower bounds

    @property
    def sent(self) -> int:
        return self.completions_sent + self.invalid_sent

    def summary(self) -> str:
        peaks = ", ".join(f"{k} {v:g}" for k, v in sorted(self.peaks.items()))
        ramp = f" (ramped {'->'.join(str(x) for x in self.ramped)})" if self.ramped else ""
        text = (
            f"{self.completions_sent} completions ({self.completions_ok} answered 200) + "
            f"{self.invalid_sent} invalid ({self.invalid_4xx} answered 4xx), {self.in_flight} "
            f"in flight{ramp}, {self.seconds:.1f}s"
        )
        if self.proven_after_s is not None:
            text += f"; queue proven by {self.proof} after {self.proven_after_s:.1f}s"
        if self.capacity_seen is not None:
            text += f"; {self.capacity_seen:g} running while requests waited"
        if self.polls or peaks:
            text += f"; peaks seen in {self.polls} polls of /metrics: {peaks or 'none'}"
        if self.other_traffic:
            text += f"; other traffic ({self.other_traffic}): counter checks are lower bounds"
        return text

    def as_json(self) -> dict[str, object]:
        return {
            "completions_sent": self.completions_sent,
            "completions_ok": self.completions_ok,
            "invalid_sent": self.invalid_sent,
            "invalid_4xx": self.invalid_4xx,
            "answered_5xx": self.answered_5xx,
            "in_flight": self.in_flight,
            "ramped": self.ramped,
            "capacity_seen": self.capacity_seen,
            "proven_after_s": self.proven_after_s,
            "proof": self.proof,
            "seconds": round(self.seconds, 3),
            "errors": dict(self.errors),
            "peaks": self.peaks,
            "polls": self.polls,
            "poll_errors": dict(self.poll_errors),
            "other_traffic": self.other_traffic,
        }


@dataclass
class LoadOutcome:
    before: Exposition
    after: Exposition
    result: LoadResult
    probe: bool = True  # the gauges were to be proven above 0 on this instance


@dataclass(frozen=True)
class LoadTarget:
    worker: Worker
    model: str
    plan: LoadPlan


@dataclass(frozen=True)
class LoadContext:
    """What every instance's load shares: the signals' series, the deadline, the watch."""

    counters: Sequence[MetricExpectation]
    gauges: Sequence[str]
    keep: Iterable[str]  # more sample names the before/after reads keep
    deadline: float  # time.monotonic() by which the whole load ends
    watch: QueueWatch | None
    budget: SocketBudget


class QueueWatch(Protocol):
    """Whether Prometheus has scraped an instance's gauges above 0 since its load began."""

    def start(self, instance: str, started_at: float) -> None: ...

    def proven(self, instance: str) -> bool: ...

    def stop(self, instance: str) -> None: ...


def wave_pattern(completions: int, invalid: int) -> list[bool]:
    """True marks an invalid request; the invalid ones spread evenly through the wave."""
    total = completions + invalid
    return [(j + 1) * invalid // total > j * invalid // total for j in range(total)]


def _sum_of(expo: Exposition, exp: MetricExpectation) -> float:
    v = expo.sum(exp.name, exp.labels)
    return 0.0 if v is None else v


class SocketBudget:
    """Sockets the loads may hold at once (the open-files limit): loads beyond it wait."""

    def __init__(self, total: int) -> None:
        self.free = total
        self._cond = asyncio.Condition()

    async def take(self, n: int) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.free >= n)
            self.free -= n

    def try_take(self, n: int) -> bool:
        if self.free < n:
            return False
        self.free -= n
        return True

    async def give(self, n: int) -> None:
        async with self._cond:
            self.free += n
            self._cond.notify_all()


def _describe(exc: BaseException, url: str) -> str:
    """aiohttp's failures in the words httpclient uses for the checks' own requests."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return f"timeout: connected but no answer in time ({url})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return describe_os_error(exc.os_error, url, connecting=True)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return f"connection closed without an answer ({url})"
    if isinstance(exc, OSError):
        return describe_os_error(exc, url, connecting=False)
    return f"connection failed ({url}): {type(exc).__name__}: {str(exc)[:200]}"


class _Instance:
    """One instance's load on the shared event loop."""

    def __init__(
        self, target: LoadTarget, session: aiohttp.ClientSession, ctx: LoadContext
    ) -> None:
        self.t = target
        self.plan = target.plan
        self.session = session
        self.counters = ctx.counters
        self.gauges = list(ctx.gauges)
        self.names = {c.name for c in ctx.counters} | set(ctx.gauges) | set(ctx.keep)
        self.deadline = ctx.deadline
        self.watch = ctx.watch if target.plan.probe else None
        self.budget = ctx.budget
        self.result = LoadResult(peaks={g: 0.0 for g in self.gauges})
        self.pattern = wave_pattern(self.plan.completions, self.plan.invalid)
        self.pos = 0
        self.senders: set[asyncio.Task[None]] = set()
        self.extra_sockets = 0
        self.t0 = 0.0
        base = target.worker.base_url
        self.url_completions = f"{base}/v1/completions"
        self.url_metrics = target.worker.metrics_url or f"{base}/metrics"
        self.bodies = {
            flag: json.dumps(
                completion_body(INVALID_MODEL if flag else target.model, self.plan.max_tokens)
            ).encode()
            for flag in (False, True)
        }

    # --- HTTP -----------------------------------------------------------------------
    async def get_metrics(self, only: Iterable[str]) -> Exposition:
        timeout = aiohttp.ClientTimeout(total=min(self.plan.timeout_s, METRICS_TIMEOUT_S))
        try:
            async with self.session.get(
                self.url_metrics, headers={"Accept": METRICS_ACCEPT}, timeout=timeout
            ) as resp:
                status, data = resp.status, await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise CheckFailed(f"/metrics: {_describe(exc, self.url_metrics)}") from None
        return parse_metrics(status, data.decode("utf-8", "replace"), only)

    # --- the phases -----------------------------------------------------------------
    async def traffic_window(self) -> Exposition:
        """/metrics twice, the window apart: what moved is someone else's traffic."""
        first = await self.get_metrics(self.names)
        await asyncio.sleep(self.plan.traffic_window_s)
        second = await self.get_metrics(self.names)
        moved = sorted(
            {
                f"{c.selector} +{_sum_of(second, c) - _sum_of(first, c):g}"
                for c in self.counters
                if _sum_of(second, c) != _sum_of(first, c)
            }
            | {
                f"{g} {v:g}"
                for g in self.gauges
                if (v := max(first.sum(g) or 0.0, second.sum(g) or 0.0)) > 0
            }
        )
        if moved:
            window = f"{self.plan.traffic_window_s:g}s"
            self.result.other_traffic = f"in the {window} before the load: {', '.join(moved)}"
        return second

    def proven(self) -> bool:
        """The gauges seen above 0 (on /metrics, and by Prometheus if it is watched). Recorded
        the first time it holds: a sender may see it before the poller's next turn, and then
        the load ends without the poller running again."""
        r = self.result
        if any(r.peaks[g] <= 0 for g in self.gauges):
            return False
        if self.watch is not None and not self.watch.proven(self.t.worker.instance):
            return False
        if r.proven_after_s is None:
            r.proven_after_s = round(time.monotonic() - self.t0, 3)
            r.proof = "/metrics polls" if self.watch is None else "Prometheus"
        return True

    def next_job(self) -> bool | None:
        """True: an invalid request, False: a completion, None: stop."""
        if time.monotonic() >= self.deadline or self.result.errors:
            return None
        if self.pos < len(self.pattern):
            self.pos += 1
            return self.pattern[self.pos - 1]
        if time.monotonic() - self.t0 < self.plan.min_seconds:
            return False
        if self.plan.probe and not self.proven():
            return False
        return None

    async def sender(self) -> None:
        r = self.result
        while (invalid := self.next_job()) is not None:
            if invalid:
                r.invalid_sent += 1
            else:
                r.completions_sent += 1
            # The request's timeout bounds connecting and waiting for the answer each (a
            # storm of connections to a busy fleet is not a hung worker); the deadline all.
            left = self.deadline - time.monotonic()
            timeout = aiohttp.ClientTimeout(
                total=max(0.01, left),
                sock_connect=self.plan.timeout_s,
                sock_read=self.plan.timeout_s,
            )
            try:
                async with self.session.post(
                    self.url_completions,
                    data=self.bodies[invalid],
                    headers={"Content-Type": "application/json"},
                    timeout=timeout,
                ) as resp:
                    code, data = resp.status, await resp.read()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                late = time.monotonic() >= self.deadline - 0.01
                r.errors[DEADLINE_TEXT if late else _describe(exc, self.url_completions)] += 1
                continue
            if 500 <= code < 600:
                r.answered_5xx += 1
            if invalid and 400 <= code < 500:
                r.invalid_4xx += 1
            elif not invalid and code == 200:
                r.completions_ok += 1
            elif invalid:
                r.errors[f"invalid request answered HTTP {code}, not 4xx"] += 1
            else:
                text = data.decode("utf-8", "replace")[:120]
                r.errors[f"completion answered HTTP {code}: {text}"] += 1

    def spawn(self, n: int) -> None:
        for _ in range(n):
            task = asyncio.ensure_future(self.sender())
            self.senders.add(task)
        self.result.in_flight = len(self.senders)

    async def poller(self, done: asyncio.Event) -> None:
        """/metrics meanwhile (only the gauges parsed): peaks, the ramp, the /metrics proof."""
        r, plan = self.result, self.plan
        level_since = time.monotonic()
        while not done.is_set():
            try:
                expo = await self.get_metrics(self.gauges)
            except CheckFailed as exc:
                r.poll_errors[str(exc)] += 1
            else:
                r.polls += 1
                for g in self.gauges:
                    v = expo.sum(g)
                    if v is not None and not math.isnan(v):
                        r.peaks[g] = max(r.peaks[g], v)
                waiting = expo.sum(QUEUE_GAUGE) or 0.0
                if waiting > 0 and r.capacity_seen is None:
                    r.capacity_seen = expo.sum(RUNNING_GAUGE)
                now = time.monotonic()
                level = len(self.senders)
                if (
                    plan.probe
                    and level < plan.max_in_flight
                    and r.peaks.get(QUEUE_GAUGE, 1.0) <= 0
                    and now - level_since >= plan.ramp_s
                    and not r.errors
                    and now < self.deadline
                ):
                    more = min(level, plan.max_in_flight - level)
                    if self.budget.try_take(more):  # else: no more sockets, stay at this level
                        self.extra_sockets += more
                        self.spawn(more)
                        if not r.ramped:
                            r.ramped.append(level)
                        r.ramped.append(len(self.senders))
                        level_since = now
                if plan.probe:
                    self.proven()  # records when and by what
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), plan.poll_interval_s)

    async def settled(self) -> Exposition:
        """/metrics once counters stopped moving between two reads and gauges are 0 (or it
        is late). Still moving after SETTLE_MAX_S: someone else's traffic."""
        start = time.monotonic()
        last: tuple[float, ...] | None = None
        busy = self.result.other_traffic is not None
        while True:
            expo = await self.get_metrics(self.names)
            now = tuple(_sum_of(expo, c) for c in self.counters)
            idle = all((expo.sum(g) or 0.0) == 0 for g in self.gauges)
            waited = time.monotonic() - start
            if busy and waited >= 2 * SETTLE_INTERVAL_S:
                return expo  # lower bounds: every request of ours is counted by now
            if now == last and (idle or waited >= GAUGES_ZERO_WAIT_S):
                return expo
            if waited >= SETTLE_MAX_S:
                if now != last:
                    self.result.other_traffic = (
                        f"counters still moving {SETTLE_MAX_S:g}s after the load"
                    )
                return expo
            last = now
            await asyncio.sleep(SETTLE_INTERVAL_S)

    async def run(self) -> LoadOutcome:
        before = await self.traffic_window()
        r = self.result
        r.started_at = time.time()
        self.t0 = time.monotonic()
        if self.watch is not None:
            self.watch.start(self.t.worker.instance, r.started_at)
        done = asyncio.Event()
        self.spawn(self.plan.in_flight)
        polled = self.gauges and self.plan.probe  # elsewhere the gauges are only present
        poll = asyncio.ensure_future(self.poller(done)) if polled else None
        try:
            while pending := [t for t in self.senders if not t.done()]:
                await asyncio.wait(pending)
        finally:
            done.set()
            if poll is not None:
                await poll
            if self.watch is not None:
                self.watch.stop(self.t.worker.instance)
            await self.budget.give(self.extra_sockets)
        r.seconds = time.monotonic() - self.t0
        after = await self.settled()
        return LoadOutcome(before=before, after=after, result=r, probe=self.plan.probe)


async def load_instance(target: LoadTarget, ctx: LoadContext) -> LoadOutcome:
    """Load one instance (within the socket budget); CheckFailed if /metrics is unusable."""
    sockets = target.plan.in_flight + 2  # + the /metrics poll and a spare
    await ctx.budget.take(sockets)
    try:
        headers = {"User-Agent": USER_AGENT}
        if target.worker.api_key:
            headers["Authorization"] = f"Bearer {target.worker.api_key}"
        limit = max(target.plan.in_flight, target.plan.max_in_flight) + 2
        connector = aiohttp.TCPConnector(
            limit=limit,
            limit_per_host=0,
            ttl_dns_cache=None,
            timeout_ceil_threshold=1e9,  # never round a timeout up: the deadline is exact
        )
        async with aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            auto_decompress=False,
            trust_env=False,  # fleet addresses are private: never through a proxy
            skip_auto_headers=("Accept-Encoding",),
        ) as session:
            return await _Instance(target, session, ctx).run()
    finally:
        await ctx.budget.give(sockets)


def run_load(
    worker: Worker,
    model: str,
    plan: LoadPlan,
    counters: Sequence[MetricExpectation],
    gauges: Sequence[str],
    keep: Iterable[str] = (),
    deadline_s: float = 600.0,
) -> LoadOutcome:
    """One instance's load from synchronous code (tests, tools)."""

    async def main() -> LoadOutcome:
        deadline = time.monotonic() + deadline_s
        ctx = LoadContext(counters, gauges, keep, deadline, None, SocketBudget(1 << 20))
        return await load_instance(LoadTarget(worker, model, plan), ctx)

    return asyncio.run(main())

