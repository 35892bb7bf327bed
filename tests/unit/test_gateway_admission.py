"""Admission against FakeWorker (fakes, not vLLM): 429 when the queue is full, 503 on a queue
timeout or with no ready worker, each counted exactly, each with Retry-After."""

from __future__ import annotations

import asyncio

import aiohttp
from gateway_fakes import (
    FakeWorker,
    assert_refused,
    config,
    errors_total,
    gateway,
    post,
    run,
    sample,
    wait_until,
)


def test_full_queue_answers_429_counted_exactly() -> None:
    async def scenario() -> None:
        w = await FakeWorker(model="m").start()
        w.hold()
        cfg = config({"m": [("w", w.url, 1)]}, queue_size=2, queue_timeout_s=30)
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            admitted = [asyncio.create_task(post(s, gw))]
            await w.wait_in_flight(1)
            admitted += [asyncio.create_task(post(s, gw)) for _ in range(2)]
            await wait_until(lambda: gw.pools["m"].depth == 2)
            assert sample(gw, "gateway_queue_depth", model="m") == 2
            overflow = await asyncio.gather(*(post(s, gw) for _ in range(3)))
            for response in overflow:
                assert_refused(response, 429, retry_after="1")
            assert sample(gw, "gateway_errors_total", model="m", reason="queue_full") == 3
            assert sample(gw, "gateway_requests_total", model="m", code="429") == 3
            # Rejected requests were never dispatched.
            assert sample(gw, "gateway_queue_wait_seconds_count", model="m") == 1
            w.release()
            assert [r[0] for r in await asyncio.gather(*admitted)] == [200] * 3
            assert w.max_in_flight == 1
            assert sample(gw, "gateway_queue_depth", model="m") == 0
            assert sample(gw, "gateway_requests_total", model="m", code="200") == 3
            assert sample(gw, "gateway_request_latency_seconds_count", model="m") == 3
            assert sample(gw, "gateway_queue_wait_seconds_count", model="m") == 3
            assert errors_total(gw) == 3
        await w.stop()

    run(scenario)


def test_queue_timeout_answers_503_with_retry_after() -> None:
    async def scenario() -> None:
        w = await FakeWorker(model="m").start()
        w.hold()
        cfg = config({"m": [("w", w.url, 1)]}, queue_size=5, queue_timeout_s=0.2,
                     retry_after_s=7)
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            first = asyncio.create_task(post(s, gw))
            await w.wait_in_flight(1)
            statuses = await asyncio.gather(post(s, gw), post(s, gw))
            for response in statuses:
                assert_refused(response, 503, retry_after="7")
            assert sample(gw, "gateway_errors_total", model="m", reason="queue_timeout") == 2
            assert sample(gw, "gateway_requests_total", model="m", code="503") == 2
            assert sample(gw, "gateway_queue_depth", model="m") == 0
            w.release()
            assert (await first)[0] == 200
            assert len(w.received) == 1  # the timed-out requests never reached the worker
            assert errors_total(gw) == 2
        await w.stop()

    run(scenario)


def test_no_ready_worker_answers_503_and_fails_the_queue() -> None:
    async def scenario() -> None:
        w = await FakeWorker(model="m").start()
        cfg = config({"m": [("w", w.url, 1)]}, queue_timeout_s=30)
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            # Queued requests are failed at once when the pool loses its last ready worker.
            w.hold()
            first = asyncio.create_task(post(s, gw))
            await w.wait_in_flight(1)
            queued = asyncio.create_task(post(s, gw))
            await wait_until(lambda: gw.pools["m"].depth == 1)
            w.healthy = False
            await wait_until(lambda: not gw.pools["m"].has_ready())
            assert_refused(await queued, 503, retry_after="1")
            assert_refused(await post(s, gw), 503, retry_after="1")
            assert sample(gw, "gateway_errors_total", model="m", reason="no_worker") == 2
            assert sample(gw, "gateway_worker_up", worker="w", model="m") == 0
            # The request in flight when /health started failing still completes.
            w.release()
            assert (await first)[0] == 200
            assert sample(gw, "gateway_requests_total", model="m", code="503") == 2
            assert sample(gw, "gateway_requests_total", model="m", code="200") == 1
            assert errors_total(gw) == 2
        await w.stop()

    run(scenario)
