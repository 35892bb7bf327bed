"""Worker failures against FakeWorker (fakes, not vLLM): a worker killed mid-request, connect
failures retried on another worker, and never a retry once the request was sent."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from gateway_fakes import (
    FakeWorker,
    api,
    assert_refused,
    config,
    errors_total,
    gateway,
    post,
    run,
    sample,
    wait_until,
)

# Active checks far apart: what these tests see comes from the proxying path alone.
SLOW_HEALTH = {"interval_s": 60, "timeout_s": 1}


def test_worker_killed_mid_request_counts_each_in_flight_request_and_others_take_over() -> None:
    async def scenario() -> None:
        a, b = await FakeWorker(model="m").start(), await FakeWorker(model="m").start()
        cfg = config({"m": [("a", a.url, 4), ("b", b.url, 4)]}, health=SLOW_HEALTH)
        gates = (a.gate_chunks(), b.gate_chunks())
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            # One stream on each worker, its first chunk already through to the client ...
            streams = [await s.post(api(gw), json={"model": "m", "stream": True})
                       for _ in range(2)]
            for stream in streams:
                assert stream.status == 200
                await stream.content.readuntil(b"\n\n")
            assert (a.in_flight, b.in_flight) == (1, 1)
            # ... and two plain requests on each.
            a.hold()
            b.hold()
            plain = [asyncio.create_task(post(s, gw)) for _ in range(4)]
            await a.wait_in_flight(3)
            await b.wait_in_flight(3)
            await a.kill()  # like kill -9 on the worker
            await wait_until(lambda: sum(t.done() for t in plain) == 2)
            failed = [t.result() for t in plain if t.done()]
            assert [r[0] for r in failed] == [502, 502]
            for _status, _headers, body in failed:
                assert json.loads(body)["error"]["code"] == 502
            # Down at once (health checks are a minute apart), and each counted exactly.
            assert sample(gw, "gateway_worker_up", worker="a", model="m") == 0
            assert sample(gw, "gateway_worker_up", worker="b", model="m") == 1
            # New requests all go to b, none fails.
            b.release()
            gates[1].set()
            fresh = await asyncio.gather(*(post(s, gw) for _ in range(6)))
            assert [r[0] for r in fresh] == [200] * 6
            outcomes = []
            for stream in streams:
                try:
                    await stream.read()
                    outcomes.append("complete")
                except aiohttp.ClientPayloadError:
                    outcomes.append("cut")  # a cut stream must not look complete
                stream.release()
            assert sorted(outcomes) == ["complete", "cut"]
            assert sorted([(await t)[0] for t in plain]) == [200, 200, 502, 502]
            # Never retried: b got its own three, then the six new ones.
            assert len(b.received) == 3 + 6
            assert sample(gw, "gateway_errors_total", model="m",
                          reason="upstream_disconnect") == 3
            assert errors_total(gw) == 3
            assert sample(gw, "gateway_requests_total", model="m", code="502") == 2
            # The cut stream had sent its 200: its code stays 200, its error is counted.
            assert sample(gw, "gateway_requests_total", model="m", code="200") == 2 + 6 + 2
            assert sample(gw, "gateway_request_latency_seconds_count", model="m") == 12
        await b.stop()

    run(scenario)


def test_connect_failure_is_retried_on_another_worker_and_marks_the_worker_down() -> None:
    async def scenario() -> None:
        dead, live = await FakeWorker(model="m").start(), await FakeWorker(model="m").start()
        cfg = config({"m": [("dead", dead.url, 1), ("live", live.url, 1)]},
                     health=SLOW_HEALTH)
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            await dead.stop()  # its port refuses connections; the gateway still thinks it up
            assert sample(gw, "gateway_worker_up", worker="dead", model="m") == 1
            results = await asyncio.gather(*(post(s, gw) for _ in range(4)))
            assert [r[0] for r in results] == [200] * 4
            assert sample(gw, "gateway_worker_up", worker="dead", model="m") == 0
            assert len(live.received) == 4
            # A connect failure recovered by a retry is no error for the client.
            assert errors_total(gw) == 0
            assert sample(gw, "gateway_requests_total", model="m", code="200") == 4
            assert sample(gw, "gateway_request_latency_seconds_count", model="m") == 4
            assert sample(gw, "gateway_queue_wait_seconds_count", model="m") == 4
        await live.stop()

    run(scenario)


def test_connect_failure_on_every_worker_answers_502_upstream_connect() -> None:
    async def scenario() -> None:
        w1, w2 = await FakeWorker(model="m").start(), await FakeWorker(model="m").start()
        cfg = config({"m": [("w1", w1.url, 1), ("w2", w2.url, 1)]}, health=SLOW_HEALTH)
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            await w1.stop()
            await w2.stop()
            assert_refused(await post(s, gw), 502, retry_after="1")
            assert sample(gw, "gateway_errors_total", model="m", reason="upstream_connect") == 1
            assert errors_total(gw) == 1
            # Both are down now: the next request is refused without trying.
            status, _, _ = await post(s, gw)
            assert status == 503
            assert sample(gw, "gateway_errors_total", model="m", reason="no_worker") == 1

    run(scenario)


def test_request_timeout_answers_504() -> None:
    async def scenario() -> None:
        w = await FakeWorker(model="m").start()
        w.hold()
        cfg = config({"m": [("w", w.url, 1)]}, request_timeout_s=0.2)
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            status, _, body = await post(s, gw)
            assert status == 504
            assert json.loads(body)["error"]["code"] == 504
            await w.wait_for("cancelled", 1)  # the worker's request was aborted
            assert sample(gw, "gateway_errors_total", model="m", reason="upstream_timeout") == 1
            assert sample(gw, "gateway_worker_up", worker="w", model="m") == 1
            w.release()
        await w.stop()

    run(scenario)
