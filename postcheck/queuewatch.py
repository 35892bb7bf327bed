"""The closed loop's other half: Prometheus polled DURING the load until it has scraped each
queue probe's gauges above 0 (one `max by (instance) (max_over_time(...))` query per gauge
and window a round, for every instance at once). A load then ends when Prometheus has seen
its queue, however late Prometheus scrapes, instead of after a fixed time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Sequence

import requests

from postcheck.fleet import prom_duration
from postcheck.prometheus import Prometheus, Series, selector
from postcheck.report import CheckFailed


class PrometheusQueueWatch:
    def __init__(self, prom: Prometheus, job: str, gauges: Sequence[str], poll_s: float) -> None:
        self.prom = prom
        self.job = job
        self.gauges = list(gauges)
        self.poll_s = poll_s
        self.started: dict[str, float] = {}  # instance -> wall clock its load began
        self.seen: dict[str, set[str]] = {}
        self.proven_at: dict[str, float] = {}
        self.errors: Counter[str] = Counter()
        self.queries = 0

    def start(self, instance: str, started_at: float) -> None:
        self.started[instance] = started_at
        self.seen.setdefault(instance, set())

    def stop(self, instance: str) -> None:
        self.started.pop(instance, None)

    def proven(self, instance: str) -> bool:
        return instance in self.proven_at

    def _query(self, expr: str) -> list[Series] | None:
        try:
            self.queries += 1
            return self.prom.query(expr)
        except (CheckFailed, requests.RequestException) as exc:
            self.errors[str(exc)[:200]] += 1
            return None

    async def round(self) -> None:
        now = time.time()
        windows: dict[str, list[str]] = {}
        for inst, t0 in list(self.started.items()):
            if inst not in self.proven_at:
                windows.setdefault(prom_duration(now - t0 + self.poll_s + 1), []).append(inst)
        if not windows:
            return
        asks = [(g, w) for g in self.gauges for w in windows]
        exprs = [
            f"max by (instance) (max_over_time({selector(g, {'job': self.job})}[{w}]))"
            for g, w in asks
        ]
        answers = await asyncio.gather(*(asyncio.to_thread(self._query, e) for e in exprs))
        for (g, w), result in zip(asks, answers, strict=True):
            mine = set(windows[w])
            for s in result or []:
                inst = s.labels.get("instance", "")
                if inst in mine and s.value > 0:
                    self.seen[inst].add(g)
        for insts in windows.values():
            for inst in insts:
                if self.seen[inst] >= set(self.gauges):
                    self.proven_at[inst] = time.time()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.round()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_s)
