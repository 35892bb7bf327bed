"""Active health checks (GET /health on every worker) with rise and fall thresholds.

A worker starts not ready. Its first good check makes it ready (so a gateway starting in
front of a serving fleet is ready after one check, which start() waits for: a gateway that
says it started routes at once); after that it goes down after ``fall``
consecutive bad checks and comes back after ``rise`` consecutive good ones. A connect failure
while proxying marks it down at once (``mark_down``); it then needs ``rise`` good checks. A
worker the stall watch took out (``stalled``, gateway/stall.py) must also answer a canary
completion in each of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import aiohttp

from gateway.config import HealthConfig
from gateway.pool import Worker


def probe_session(timeout_s: float | None = None) -> aiohttp.ClientSession:
    """A session for checks outside the request path (health checks, canaries): a new
    connection each time (a reused one could hide a worker that stopped accepting), no
    cookies, no pool limit."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        connector=aiohttp.TCPConnector(limit=0, force_close=True),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def observe(worker: Worker, ok: bool, rise: int, fall: int) -> bool:
    """Records one check's outcome; True when the worker's health changed."""
    was = worker.healthy
    if ok:
        worker.good_streak += 1
        worker.bad_streak = 0
        if not worker.healthy and (not worker.checked or worker.good_streak >= rise):
            worker.healthy = True
    else:
        worker.bad_streak += 1
        worker.good_streak = 0
        if worker.healthy and worker.bad_streak >= fall:
            worker.healthy = False
    worker.checked = True
    return worker.healthy != was


def mark_down(worker: Worker) -> bool:
    """Passive check: the connection to the worker failed. True when it was healthy."""
    was = worker.healthy
    worker.healthy = False
    worker.checked = True
    worker.good_streak = 0
    return was


class HealthChecker:
    """One probing task per worker; ``on_change(worker)`` after each change of health."""

    def __init__(self, workers: list[Worker], config: HealthConfig,
                 on_change: Callable[[Worker], None],
                 canary: Callable[[Worker], Awaitable[bool]] | None = None) -> None:
        self._workers = workers
        self._config = config
        self._on_change = on_change
        self._canary = canary  # a stalled worker must answer it too (gateway/stall.py)
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = probe_session(self._config.timeout_s)
        first = await asyncio.gather(*(self.probe(w) for w in self._workers))
        for worker, ok in zip(self._workers, first, strict=True):
            if observe(worker, ok, self._config.rise, self._config.fall):
                self._on_change(worker)
        self._tasks = [asyncio.create_task(self._loop(w), name=f"health {w.name}")
                       for w in self._workers]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    async def probe(self, worker: Worker) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(f"{worker.url}/health") as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _loop(self, worker: Worker) -> None:
        while True:  # the first check was start()'s
            await asyncio.sleep(self._config.interval_s)
            ok = await self.probe(worker)
            if ok and worker.stalled and self._canary is not None:
                ok = await self._canary(worker)  # /health says 200 while the engine hangs
            if observe(worker, ok, self._config.rise, self._config.fall):
                self._on_change(worker)
