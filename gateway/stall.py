"""Hung engines: a worker with requests in flight and no response bytes gets a canary.

vLLM answers ``/health`` 200 unless its engine is dead, so an engine that is alive but makes no
progress (a deadlock, a wedged GPU, a SIGSTOPped EngineCore) keeps getting requests. The
proxy stamps ``worker.last_bytes`` whenever bytes of any answer arrive from a worker (headers
and body chunks). When a worker has had requests in flight and no bytes for ``stall_s``, it
gets a one-token completion, out of band (no gateway slot): the *canary*.

* An answer 200 within ``canary_timeout_s``: the worker is slow, not hung (a non-streamed
  answer sends nothing until it ends); the silence is counted again from now.
* No answer in time, and still no bytes from its other requests meanwhile (a full batch makes
  the canary wait for a running request to finish, and that request's answer is progress):
  the worker is *stalled*. It is marked down, every request in flight on it is aborted and
  answered 504 ``worker_stalled`` (a cut stream when its answer had started), and while stalled
  the health loop sends a canary after each good ``/health``; ``rise`` good ones in a row
  bring it back.
* Any other answer in time (a 4xx or 5xx) proves nothing either way: logged, counted again.

The canary carries the ``Authorization`` of a request in flight on that worker (it was
accepted by the worker's ``--api-key`` check, which answers at once) and keeps it for the
recovery canaries; it is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from gateway import logs
from gateway.config import HealthConfig
from gateway.health import mark_down, probe_session
from gateway.pool import Worker

if TYPE_CHECKING:
    from gateway.proxy import Exchange

REASON = "worker_stalled"


@dataclass(eq=False)
class Watched:
    """One request in flight, as the stall watch sees it."""

    ex: Exchange
    authorization: str | None
    deadline: asyncio.Timeout | None = None
    aborted: bool = False  # the worker stalled: the proxy answers it worker_stalled


@dataclass
class _Quiet:
    since: float  # start of the silence: last bytes, or when the worker got busy
    canary: asyncio.Task[None] | None = None
    authorization: str | None = field(default=None, repr=False)


def canary_body(model: str) -> dict[str, object]:
    return {"model": model, "prompt": "ping", "max_tokens": 1, "temperature": 0}


class StallWatch:
    """Watches every worker's silence; ``on_stall(worker)`` after marking one down."""

    def __init__(self, workers: list[Worker], config: HealthConfig, logger: logging.Logger,
                 on_change: Callable[[Worker], None]) -> None:
        self._workers = workers
        self._config = config
        self._log = logger
        self._on_change = on_change
        self._watched: set[Watched] = set()
        self._quiet: dict[str, _Quiet] = {}
        self._auth: dict[str, str | None] = {}  # per stalled worker, for recovery canaries
        self._stalled_at: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        # Silence is measured every tick: a stall is seen at most a tick late, never early.
        self.tick_s = min(config.interval_s, config.stall_s / 4)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._session = probe_session()  # each canary sets its own timeout
        self._task = asyncio.create_task(self._loop(), name="stall watch")

    async def stop(self) -> None:
        tasks = [self._task] if self._task else []
        tasks += [q.canary for q in self._quiet.values() if q.canary is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------ the proxy's hooks
    def watch(self, ex: Exchange, authorization: str | None) -> Watched:
        watched = Watched(ex, authorization)
        self._watched.add(watched)
        return watched

    def unwatch(self, watched: Watched) -> None:
        self._watched.discard(watched)

    # ------------------------------------------------------------------ the canary
    async def canary(self, worker: Worker, authorization: str | None) -> int | None:
        """The canary's HTTP status, or None when it got no answer within canary_timeout_s."""
        assert self._session is not None, "StallWatch.start() first"
        headers = {"X-Request-Id": f"gateway-canary-{uuid.uuid4().hex}"}
        if authorization:
            headers["Authorization"] = authorization
        try:
            async with self._session.post(
                    f"{worker.url}/v1/completions", json=canary_body(worker.model),
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self._config.canary_timeout_s)) as r:
                await r.read()
                return r.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    async def recovery_check(self, worker: Worker) -> bool:
        """For the health loop while the worker is stalled: a canary answered 200 in time."""
        status = await self.canary(worker, self._auth.get(worker.name))
        if status == 200:
            worker.last_bytes = time.monotonic()
        return status == 200

    def health_changed(self, worker: Worker) -> None:
        """A stalled worker that is healthy again (``rise`` good canaries) is no longer stalled."""
        if worker.stalled and worker.healthy:
            worker.stalled = False
            self._auth.pop(worker.name, None)
            down_s = time.monotonic() - self._stalled_at.pop(worker.name, time.monotonic())
            logs.event(self._log, "worker_stall_recovered", worker=worker.name,
                       model=worker.model, down_s=round(down_s, 3), rise=self._config.rise)

    # ------------------------------------------------------------------ watching
    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            self.check(time.monotonic())

    def check(self, now: float) -> None:
        """One look at every worker: starts a canary for each silent for stall_s."""
        for worker in self._workers:
            quiet = self._quiet.get(worker.name)
            if worker.in_flight == 0 or worker.stalled:
                if quiet is not None and quiet.canary is None:
                    del self._quiet[worker.name]
                continue
            if quiet is None:
                quiet = self._quiet[worker.name] = _Quiet(now)
            quiet.since = max(quiet.since, worker.last_bytes)
            if quiet.canary is None and now - quiet.since >= self._config.stall_s:
                quiet.canary = asyncio.create_task(self._probe(worker, quiet),
                                                   name=f"canary {worker.name}")

    def _authorization(self, worker: Worker) -> str | None:
        for watched in self._watched:
            if watched.ex.worker == worker.name and watched.authorization:
                return watched.authorization
        return None

    async def _probe(self, worker: Worker, quiet: _Quiet) -> None:
        try:
            authorization = self._authorization(worker)
            silent_from = quiet.since
            sent = time.monotonic()
            silent_s = sent - silent_from
            status = await self.canary(worker, authorization)
            now = time.monotonic()
            # Stalled: no answer to the canary, and not a byte of any answer since the silence
            # began (with a full batch the canary waits for a running request to finish).
            if status is None and worker.last_bytes <= silent_from:
                self._stalled(worker, authorization, silent_s + (now - sent))
                return
            if status is not None and status != 200:
                logs.event(self._log, "canary_inconclusive", logging.WARNING,
                           worker=worker.name, model=worker.model, status=status,
                           in_flight=worker.in_flight)
            else:
                logs.event(self._log, "canary_ok" if status == 200 else "canary_late",
                           worker=worker.name, model=worker.model,
                           canary_s=round(now - sent, 3), silent_s=round(silent_s, 3),
                           in_flight=worker.in_flight)
            quiet.since = now  # the silence is counted again
        finally:
            quiet.canary = None

    def _stalled(self, worker: Worker, authorization: str | None, silent_s: float) -> None:
        worker.stalled = True
        self._auth[worker.name] = authorization
        self._stalled_at[worker.name] = time.monotonic()
        self._quiet.pop(worker.name, None)
        stuck = [w for w in self._watched if w.ex.worker == worker.name and not w.aborted]
        logs.event(self._log, "worker_stalled", logging.WARNING, worker=worker.name,
                   model=worker.model, silent_s=round(silent_s, 3),
                   stall_s=self._config.stall_s, canary_timeout_s=self._config.canary_timeout_s,
                   in_flight=worker.in_flight, aborted=len(stuck))
        if mark_down(worker):
            self._on_change(worker)
        for watched in stuck:
            abort(watched)


def abort(watched: Watched) -> None:
    """Ends the request's wait on the worker now: its deadline fires, and the proxy, seeing
    ``aborted``, answers worker_stalled instead of upstream_timeout."""
    watched.aborted = True
    if watched.deadline is None:
        return
    with contextlib.suppress(RuntimeError):  # the request left its deadline's scope already
        watched.deadline.reschedule(asyncio.get_running_loop().time())
