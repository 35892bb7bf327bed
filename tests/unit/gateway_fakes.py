"""Helpers for the gateway's unit tests: configs, an in-process gateway, metric reads.

The workers behind the gateway are FakeWorker (gateway/testing/fakes.py): fakes, not vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import Config, parse
from gateway.metrics import REASONS
from gateway.server import Gateway
from gateway.testing.fakes import FakeWorker

__all__ = ["FakeWorker", "config", "families", "gateway", "run", "sample", "wait_until"]

# Health checks fast enough for tests; a test that must see passive marking alone slows them.
FAST_HEALTH = {"interval_s": 0.05, "timeout_s": 0.05, "rise": 2, "fall": 2}


def config(pools: dict[str, list[tuple[str, str, int]]], worker_keys: dict[str, Any] | None = None,
           **overrides: Any) -> Config:
    """pools: model -> [(worker name, url, capacity)]; worker_keys: more keys of every worker;
    overrides: top-level or pool keys."""
    pool_keys = {"queue_size", "queue_timeout_s", "request_timeout_s", "routing"}
    data: dict[str, Any] = {
        "api": {"host": "127.0.0.1", "port": 0},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "health": dict(FAST_HEALTH),
        "shutdown_timeout_s": 5,
        "pools": [
            {"model": model,
             "workers": [{"name": n, "url": u, "capacity": c, **(worker_keys or {})}
                         for n, u, c in workers],
             **{k: v for k, v in overrides.items() if k in pool_keys}}
            for model, workers in pools.items()
        ],
    }
    for key, value in overrides.items():
        if key == "health":
            data["health"].update(value)
        elif key not in pool_keys:
            data[key] = value
    return parse(data)


@contextlib.asynccontextmanager
async def gateway(cfg: Config, ready: int | None = None) -> AsyncIterator[Gateway]:
    """A started in-process gateway; waits until ``ready`` workers (default: all) are up."""
    gw = Gateway(cfg)
    await gw.start()
    try:
        want = len(gw.all_workers()) if ready is None else ready
        await wait_until(lambda: sum(w.ready for w in gw.all_workers()) >= want)
        yield gw
    finally:
        await gw.shutdown()


def run(coro: Callable[[], Coroutine[Any, Any, None]], timeout_s: float = 30.0) -> None:
    """Runs one test scenario in a fresh event loop; a hang fails it instead of the suite."""

    async def bounded() -> None:
        await asyncio.wait_for(coro(), timeout_s)

    asyncio.run(bounded())


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.005)


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(gw: Gateway, name: str, **labels: str) -> float:
    """One sample's value from the gateway's exposition; KeyError when not exposed."""
    for family in text_string_to_metric_families(gw.metrics.exposition().decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise KeyError(f"{name}{labels} not exposed")


def api(gw: Gateway, path: str = "/v1/completions") -> str:
    return f"http://{gw.api_address[0]}:{gw.api_address[1]}{path}"


def admin(gw: Gateway, path: str) -> str:
    return f"http://{gw.metrics_address[0]}:{gw.metrics_address[1]}{path}"


async def post(session: aiohttp.ClientSession, gw: Gateway, model: str = "m",
               **extra: Any) -> Response:
    async with session.post(api(gw), json={"model": model, "prompt": "hi", **extra}) as r:
        return r.status, dict(r.headers), await r.read()


Response = tuple[int, dict[str, str], bytes]


def assert_refused(response: Response, code: int, retry_after: str) -> None:
    """An answer the gateway gave itself: the status, Retry-After, and OpenAI's error shape."""
    status, headers, body = response
    assert status == code, (status, body)
    assert headers["Retry-After"] == retry_after
    assert json.loads(body)["error"]["code"] == code


def errors_total(gw: Gateway) -> float:
    """Every gateway_errors_total series, every pool and the no-pool label, summed."""
    return sum(sample(gw, "gateway_errors_total", model=m, reason=r)
               for m in ("", *gw.pools) for r in REASONS)
