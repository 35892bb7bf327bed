"""Upstream connections against FakeWorker (fakes, not vLLM) behind a LatencyLink (a relay
with network latency): the gateway never reuses a connection the worker may already be
closing, and no worker's cookie reaches another client."""

from __future__ import annotations

import asyncio

import aiohttp
from gateway_fakes import FakeWorker, config, families, gateway, post, run

from gateway.server import Gateway
from gateway.testing.network import LatencyLink

# The worker closes a connection idle this long (vLLM: VLLM_HTTP_TIMEOUT_KEEP_ALIVE, 5 s by
# default; shorter here so the test takes seconds), behind this one-way latency.
WORKER_KEEPALIVE_S = 0.5
LATENCY_S = 0.05
# The gateway's upstream keep-alive: the worker's minus a margin above one round trip (0.1 s),
# as the role derives it (roles/gateway: VLLM_HTTP_TIMEOUT_KEEP_ALIVE minus 1 s).
GATEWAY_KEEPALIVE_S = 0.3
# Gaps between two requests on one pool: 0.2 s to 0.8 s in 25 ms steps. A gateway that reuses
# connections idle up to the worker's keep-alive loses the request in (0.4 s, 0.5 s): written
# less than a round trip before the worker's close, seen closed only after it.
GAPS = [round(WORKER_KEEPALIVE_S - 0.3 + 0.025 * i, 3) for i in range(25)]
# Active checks far apart: a worker marked down here was marked by the proxying path.
SLOW_HEALTH = {"interval_s": 60, "timeout_s": 1}


async def _pair(session: aiohttp.ClientSession, gw: Gateway, model: str,
                gap: float) -> tuple[int, int]:
    first = await post(session, gw, model)
    await asyncio.sleep(gap)
    second = await post(session, gw, model)
    return first[0], second[0]


def test_requests_at_every_gap_around_the_worker_s_keepalive_never_fail() -> None:
    """One pool per gap (each one worker behind its own link), all swept at once: a first
    request, the gap, a second request. Every answer is 200, no error is counted, no worker is
    marked down, and connections idle less than the gateway's keep-alive are still reused."""

    async def scenario() -> None:
        workers = [await FakeWorker(model=f"m{i}", keepalive_s=WORKER_KEEPALIVE_S).start()
                   for i in range(len(GAPS))]
        links = [await LatencyLink(w.port, LATENCY_S).start() for w in workers]
        cfg = config({f"m{i}": [(f"w{i}", link.url, 4)] for i, link in enumerate(links)},
                     worker_keys={"keepalive_s": WORKER_KEEPALIVE_S},
                     upstream_keepalive_s=GATEWAY_KEEPALIVE_S, health=SLOW_HEALTH)
        try:
            async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
                before = [link.accepted for link in links]  # the first health checks
                results = await asyncio.gather(*(_pair(s, gw, f"m{i}", gap)
                                                 for i, gap in enumerate(GAPS)))
                connections = [link.accepted - b for link, b in zip(links, before, strict=True)]
                for gap, result, n in zip(GAPS, results, connections, strict=True):
                    print(f"gap {gap:.3f} s: {result}, {n} upstream connection(s)")
                failed = [(gap, r) for gap, r in zip(GAPS, results, strict=True)
                          if r != (200, 200)]
                assert failed == [], failed
                # One read of the exposition (26 pools x 13 reasons of errors_total).
                exposed = families(gw.metrics.exposition().decode())
                errors = [(s.labels, s.value) for s in exposed["gateway_errors"].samples
                          if s.name == "gateway_errors_total" and s.value != 0]
                assert errors == []
                up = {s.labels["worker"]: s.value for s in exposed["gateway_worker_up"].samples}
                assert up == {f"w{i}": 1 for i in range(len(GAPS))}
                assert all(len(w.received) == 2 for w in workers)
                # Keep-alive still works: the shortest gap reused its connection.
                assert connections[0] == 1, connections
        finally:
            for link in links:
                await link.stop()
            for w in workers:
                await w.stop()

    run(scenario)


def test_upstream_keepalive_0_opens_a_connection_per_request() -> None:
    async def scenario() -> None:
        worker = await FakeWorker(model="m", keepalive_s=WORKER_KEEPALIVE_S).start()
        link = await LatencyLink(worker.port, 0.0).start()
        cfg = config({"m": [("w", link.url, 4)]}, upstream_keepalive_s=0, health=SLOW_HEALTH)
        try:
            async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
                before = link.accepted
                statuses = [(await post(s, gw, "m"))[0] for _ in range(3)]
                assert statuses == [200] * 3
                assert link.accepted - before == 3
        finally:
            await link.stop()
            await worker.stop()

    run(scenario)


def test_a_worker_s_cookie_never_reaches_another_client() -> None:
    """A worker answers with Set-Cookie (at a host name: aiohttp's jar takes no cookie from
    an IP address). Its client gets the header; the next request, from another client over
    the same upstream connection, carries no Cookie."""

    async def scenario() -> None:
        worker = await FakeWorker(model="m", set_cookie="session=first-client",
                                  host="localhost").start()
        cfg = config({"m": [("w", worker.url, 4)]}, health=SLOW_HEALTH)
        try:
            async with gateway(cfg) as gw:
                async with aiohttp.ClientSession() as alice:
                    status, headers, _ = await post(alice, gw, "m")
                assert status == 200
                assert headers.get("Set-Cookie") == "session=first-client"
                async with aiohttp.ClientSession() as bob:
                    status, _, _ = await post(bob, gw, "m")
                assert status == 200
                assert [r.cookie for r in worker.received] == [None, None]
        finally:
            await worker.stop()

    run(scenario)
