"""Workers and pools: least outstanding requests under per-worker caps, behind a bounded FIFO.

A pool serves one model. A request takes a *slot* on a worker (at most ``capacity`` slots per
worker) before it is sent; when no slot is free it waits in the pool's FIFO queue, which holds
at most ``queue_size`` requests and for at most ``queue_timeout_s``. In ``prefix_affinity`` mode
(gateway/routing.py) a request with a key takes the worker its key picks within the load
bound, else the least loaded one; a waiter keeps its key, and the queue its order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config import PoolConfig, WorkerConfig
from gateway.routing import Affinity, request_key


class AdmissionError(Exception):
    """The request gets no slot; ``reason`` is its gateway_errors_total reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Worker:
    """One vLLM instance: its health, drain flag and requests in flight."""

    def __init__(self, config: WorkerConfig, model: str) -> None:
        self.name = config.name
        self.url = config.url
        self.capacity = config.capacity
        self.model = model
        self.healthy = False
        self.draining = False
        self.in_flight = 0
        self.checked = False  # at least one health check has finished
        self.good_streak = 0
        self.bad_streak = 0
        self.last_bytes = 0.0  # time.monotonic() of the last answer bytes from it (stall.py)
        self.stalled = False  # taken out by the hung-engine canary until it answers again

    @property
    def ready(self) -> bool:
        """Takes new requests: healthy and not drained (what gateway_worker_up shows)."""
        return self.healthy and not self.draining

    @property
    def free(self) -> bool:
        return self.ready and self.in_flight < self.capacity

    def state(self) -> dict[str, object]:
        return {
            "name": self.name,
            "model": self.model,
            "url": self.url,
            "capacity": self.capacity,
            "healthy": self.healthy,
            "draining": self.draining,
            "ready": self.ready,
            "in_flight": self.in_flight,
            "stalled": self.stalled,
        }


@dataclass(eq=False)
class _Waiter:
    """A queued request: the slot it waits for, and its affinity key (None: least loaded)."""

    future: asyncio.Future[Worker]
    key: str | None


class Pool:
    """The workers of one served model and their admission queue."""

    def __init__(self, config: PoolConfig,
                 on_change: Callable[[Pool], None] = lambda pool: None) -> None:
        self.model = config.model
        self.queue_size = config.queue_size
        self.queue_timeout_s = config.queue_timeout_s
        self.request_timeout_s = config.request_timeout_s
        self.workers = [Worker(w, config.model) for w in config.workers]
        self.routing = config.routing
        self._affinity = (Affinity(config.routing, [w.name for w in self.workers])
                          if config.routing.mode == "prefix_affinity" else None)
        self._waiters: deque[_Waiter] = deque()
        self._next = 0  # where the tie-break between equally loaded workers starts
        self._on_change = on_change  # queue depth or worker readiness changed

    @property
    def depth(self) -> int:
        return len(self._waiters)

    def has_ready(self) -> bool:
        return any(w.ready for w in self.workers)

    def key(self, headers: Mapping[str, str], path: str, body: Mapping[str, Any]) -> str | None:
        """The request's affinity key; None in least_outstanding mode (nothing computed)."""
        if self._affinity is None:
            return None
        return request_key(self.routing, headers, path, body)

    def _pick(self, key: str | None = None) -> Worker | None:
        """The worker ``key`` picks on the ring within the load bound (prefix_affinity), else
        the free worker with the fewest requests in flight; ties rotate."""
        if key is not None and self._affinity is not None:
            index = self._affinity.pick(key, self.workers)
            if index is not None:
                worker = self.workers[index]
                worker.in_flight += 1
                return worker
        best: Worker | None = None
        n = len(self.workers)
        for i in range(n):
            worker = self.workers[(self._next + i) % n]
            if not worker.free:
                continue
            if best is None or worker.in_flight < best.in_flight:
                best = worker
        if best is not None:
            self._next = (self.workers.index(best) + 1) % n
            best.in_flight += 1
        return best

    async def acquire(self, timeout_s: float, *, front: bool = False,
                      key: str | None = None) -> Worker:
        """A slot on a worker, waiting in the FIFO queue if none is free.

        ``front``: a retry after a connect failure goes to the head of the queue, since it
        already waited its turn. ``key``: the request's affinity key (Pool.key). Raises
        AdmissionError (queue_full, queue_timeout, no_worker).
        """
        if not self.has_ready():
            raise AdmissionError("no_worker")
        if front or not self._waiters:
            worker = self._pick(key)
            if worker is not None:
                return worker
        if not front and len(self._waiters) >= self.queue_size:
            raise AdmissionError("queue_full")
        future: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(future, key)
        if front:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        self._on_change(self)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise AdmissionError("queue_timeout") from None
        except asyncio.CancelledError:
            # The client went away; a slot handed over at the same moment goes back.
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(future.result())
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                self._on_change(self)

    def release(self, worker: Worker) -> None:
        """Gives a slot back and hands free slots to the queue's head."""
        worker.in_flight -= 1
        self.dispatch()

    def dispatch(self) -> None:
        """Hands free slots to waiters in FIFO order; fails them all when no worker is ready."""
        changed = False
        if not self.has_ready():
            while self._waiters:
                future = self._waiters.popleft().future
                if not future.done():
                    future.set_exception(AdmissionError("no_worker"))
                changed = True
        while self._waiters:
            head = self._waiters[0]
            if head.future.done():
                self._waiters.popleft()
                changed = True
                continue
            worker = self._pick(head.key)
            if worker is None:
                break
            self._waiters.popleft().future.set_result(worker)
            changed = True
        if changed:
            self._on_change(self)

    def worker(self, name: str) -> Worker | None:
        return next((w for w in self.workers if w.name == name), None)
