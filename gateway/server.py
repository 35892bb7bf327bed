"""One gateway instance: its pools, metrics, health checks, two listeners and its shutdown."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from aiohttp import web

from gateway import logs
from gateway.admin import Admin
from gateway.config import Config
from gateway.health import HealthChecker, mark_down
from gateway.metrics import Metrics
from gateway.pool import Pool, Worker
from gateway.proxy import Api, Exchange
from gateway.stall import StallWatch


def upstream_connector(keepalive_s: float) -> aiohttp.TCPConnector:
    """The connection pool to the workers. An idle connection is reused for at most
    ``keepalive_s`` (config: below every worker's own keep-alive), so the gateway never writes
    a request onto a connection the worker is closing; 0: a new connection per request."""
    if keepalive_s == 0:
        return aiohttp.TCPConnector(limit=0, force_close=True)
    return aiohttp.TCPConnector(limit=0, keepalive_timeout=keepalive_s)


class Gateway:
    """Everything the gateway holds; no module-level state, so tests can run several."""

    def __init__(self, config: Config, logger: logging.Logger | None = None) -> None:
        self.config = config
        self.log = logger or logging.getLogger(logs.LOGGER)
        self.metrics = Metrics([p.model for p in config.pools],
                               [(w.name, p.model) for p in config.pools for w in p.workers])
        self.pools = {p.model: Pool(p, on_change=self._queue_changed) for p in config.pools}
        self._by_name = {w.name: (pool, w) for pool in self.pools.values() for w in pool.workers}
        self.stall = StallWatch(self.all_workers(), config.health, self.log,
                                self._health_changed)
        self.health = HealthChecker(self.all_workers(), config.health, self._health_changed,
                                    canary=self.stall.recovery_check)
        self.started_at = int(time.time())
        self.stopping = False  # SIGTERM: new requests get 503
        self.aborting = False  # the shutdown timeout ran out: in-flight requests are cut
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._session: aiohttp.ClientSession | None = None
        self._runners: list[web.AppRunner] = []
        self.api_address: tuple[str, int] = (config.api.host, config.api.port)
        self.metrics_address: tuple[str, int] = (config.metrics.host, config.metrics.port)

    # ------------------------------------------------------------------ lifecycle
    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Gateway.start() first"
        return self._session

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=upstream_connector(self.config.upstream_keepalive_s),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout_s),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            # One session carries every client's requests: a worker's Set-Cookie goes back to
            # its own client only, never into a jar that would replay it on others' requests.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        try:
            self.api_address = await self._listen(Api(self).app(), self.config.api.host,
                                                  self.config.api.port, cancel=True)
            self.metrics_address = await self._listen(Admin(self).app(),
                                                      self.config.metrics.host,
                                                      self.config.metrics.port, cancel=False)
        except BaseException:
            await self._close()
            raise
        await self.health.start()
        await self.stall.start()
        logs.event(self.log, "started", api=f"{self.api_address[0]}:{self.api_address[1]}",
                   metrics=f"{self.metrics_address[0]}:{self.metrics_address[1]}",
                   pools={p.model: [w.name for w in p.workers] for p in self.pools.values()})

    async def _listen(self, app: web.Application, host: str, port: int,
                      cancel: bool) -> tuple[str, int]:
        # handler_cancellation: a client that disconnects cancels its handler, which closes
        # the upstream connection, so the worker stops generating for nobody.
        runner = web.AppRunner(app, access_log=None, handler_cancellation=cancel,
                               shutdown_timeout=0.5)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        address = runner.addresses[0]
        return str(address[0]), int(address[1])

    async def shutdown(self) -> bool:
        """Stops taking work, waits for in-flight requests up to shutdown_timeout_s, closes.

        True when every in-flight request finished in time."""
        self.stopping = True
        logs.event(self.log, "shutting_down", in_flight=self._active,
                   timeout_s=self.config.shutdown_timeout_s)
        try:
            await asyncio.wait_for(self._idle.wait(), self.config.shutdown_timeout_s)
            drained = True
        except TimeoutError:
            drained = False
            self.aborting = True
            logs.event(self.log, "shutdown_timeout", logging.WARNING, in_flight=self._active)
        await self._close()
        logs.event(self.log, "stopped", drained=drained)
        return drained

    async def _close(self) -> None:
        await self.stall.stop()
        await self.health.stop()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------ requests
    def request_started(self) -> None:
        self._active += 1
        self._idle.clear()

    def request_finished(self, ex: Exchange, active: bool) -> None:
        if active:
            self._active -= 1
            if self._active == 0:
                self._idle.set()
        if not ex.counted:
            return
        duration = time.monotonic() - ex.started
        self.metrics.finished(ex.model, ex.code, ex.reason, duration if ex.dispatched else None)
        logs.event(self.log, "request", request_id=ex.request_id, method=ex.method,
                   path=ex.path, model=ex.model, code=ex.code, reason=ex.reason,
                   worker=ex.worker, queue_wait_s=round(ex.queue_wait_s, 6),
                   duration_s=round(duration, 6), connect_retries=ex.connect_retries)

    # ------------------------------------------------------------------ workers
    def all_workers(self) -> list[Worker]:
        return [w for pool in self.pools.values() for w in pool.workers]

    def find_worker(self, name: str) -> Worker | None:
        found = self._by_name.get(name)
        return found[1] if found else None

    def worker_failed(self, worker: Worker, how: str) -> None:
        """A request could not reach the worker (connect) or lost it (disconnect): down now."""
        if mark_down(worker):
            logs.event(self.log, "worker_marked_down", logging.WARNING, worker=worker.name,
                       model=worker.model, cause=how)
            self._health_changed(worker)

    def set_draining(self, worker: Worker, draining: bool) -> None:
        if worker.draining != draining:
            worker.draining = draining
            logs.event(self.log, "worker_drain" if draining else "worker_undrain",
                       worker=worker.name, model=worker.model, in_flight=worker.in_flight)
            self._health_changed(worker)

    def _health_changed(self, worker: Worker) -> None:
        self.stall.health_changed(worker)
        self.metrics.worker_up.labels(worker=worker.name, model=worker.model).set(
            1 if worker.ready else 0)
        logs.event(self.log, "worker_state", worker=worker.name, model=worker.model,
                   healthy=worker.healthy, draining=worker.draining, ready=worker.ready)
        self._by_name[worker.name][0].dispatch()

    def _queue_changed(self, pool: Pool) -> None:
        self.metrics.queue_depth.labels(model=pool.model).set(pool.depth)
