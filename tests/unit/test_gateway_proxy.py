"""The gateway in process against FakeWorker (fakes, not vLLM): routing, metrics, streaming."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest
from gateway_fakes import (
    FakeWorker,
    admin,
    api,
    config,
    errors_total,
    families,
    gateway,
    post,
    run,
    sample,
    wait_until,
)

from gateway.metrics import REASONS

SIX = {
    "gateway_requests", "gateway_request_latency_seconds", "gateway_queue_depth",
    "gateway_queue_wait_seconds", "gateway_errors", "gateway_worker_up",
}


def test_exactly_six_families_no_created_and_everything_precreated() -> None:
    async def scenario() -> None:
        # Nothing listens on these workers: they stay not ready, and still have a series.
        cfg = config({"a": [("w1", "http://127.0.0.1:9", 1)],
                      "b": [("w2", "http://127.0.0.1:9", 2), ("w3", "http://127.0.0.1:9", 1)]})
        async with gateway(cfg, ready=0) as gw, aiohttp.ClientSession() as s:
            async with s.get(admin(gw, "/metrics")) as r:
                assert r.status == 200
                text = await r.text()
            assert "_created" not in text
            fams = families(text)
            assert set(fams) == SIX
            assert {f.type for f in fams.values()} == {"counter", "histogram", "gauge"}
            for worker, model in (("w1", "a"), ("w2", "b"), ("w3", "b")):
                assert sample(gw, "gateway_worker_up", worker=worker, model=model) == 0
            for model in ("", "a", "b"):
                for reason in REASONS:
                    assert sample(gw, "gateway_errors_total", model=model, reason=reason) == 0
            for model in ("a", "b"):
                assert sample(gw, "gateway_queue_depth", model=model) == 0
                assert sample(gw, "gateway_request_latency_seconds_count", model=model) == 0
                assert sample(gw, "gateway_queue_wait_seconds_count", model=model) == 0
            # The latency buckets reach LLM durations.
            assert 'le="600.0"' in text

    run(scenario)


def test_success_counts_exact_deltas_and_passes_authorization_unlogged(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway")

    async def scenario() -> None:
        w1, w2 = await FakeWorker(model="m").start(), await FakeWorker(model="m").start()
        cfg = config({"m": [("w1", w1.url, 4), ("w2", w2.url, 4)]})
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            headers = {"Authorization": "Bearer sk-secret-key-123"}
            for _ in range(6):
                async with s.post(api(gw), json={"model": "m", "prompt": "x"},
                                  headers=headers) as r:
                    assert r.status == 200
                    assert (await r.json())["object"] == "text_completion"
            async with s.post(api(gw, "/v1/chat/completions"),
                              data=json.dumps({"model": "m", "messages": []}),
                              headers={**headers, "content-type": "application/json"}) as r:
                assert r.status == 200
            assert sample(gw, "gateway_requests_total", model="m", code="200") == 7
            assert sample(gw, "gateway_request_latency_seconds_count", model="m") == 7
            assert sample(gw, "gateway_queue_wait_seconds_count", model="m") == 7
            assert sample(gw, "gateway_worker_up", worker="w1", model="m") == 1
            assert sample(gw, "gateway_worker_up", worker="w2", model="m") == 1
            assert errors_total(gw) == 0
        received = w1.received + w2.received
        assert len(received) == 7
        assert {r.authorization for r in received} == {"Bearer sk-secret-key-123"}
        assert {r.path for r in received} == {"/v1/completions", "/v1/chat/completions"}
        assert all(r.content_types == ["application/json"] for r in received)
        assert len(w1.received) >= 1 and len(w2.received) >= 1  # ties rotate
        await w1.stop()
        await w2.stop()

    run(scenario)
    logged = "\n".join(r.getMessage() + json.dumps(getattr(r, "fields", {}))
                       for r in caplog.records)
    assert '"code": 200' in logged  # the access log is there ...
    assert "sk-secret-key-123" not in logged  # ... without the key
    assert "Authorization" not in logged


def test_unknown_model_bad_body_and_models_list() -> None:
    async def scenario() -> None:
        wa, wb = await FakeWorker(model="a").start(), await FakeWorker(model="b").start()
        cfg = config({"a": [("wa", wa.url, 1)], "b": [("wb", wb.url, 1)]})
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            status, _, body = await post(s, gw, model="nope")
            assert status == 404
            error = json.loads(body)["error"]
            assert error["code"] == 404 and error["param"] == "model"
            assert error["type"] == "NotFoundError" and "nope" in error["message"]
            async with s.post(api(gw), data=b"not json") as r:
                assert r.status == 400
                assert (await r.json())["error"]["code"] == 400
            async with s.get(api(gw, "/v1/models")) as r:
                assert r.status == 200
                listing = await r.json()
            assert listing["object"] == "list"
            assert [m["id"] for m in listing["data"]] == ["a", "b"]
            assert sample(gw, "gateway_errors_total", model="", reason="unknown_model") == 1
            assert sample(gw, "gateway_errors_total", model="", reason="bad_request") == 1
            assert sample(gw, "gateway_requests_total", model="", code="404") == 1
            assert sample(gw, "gateway_requests_total", model="", code="400") == 1
            assert sample(gw, "gateway_requests_total", model="", code="200") == 1
            # Nothing reached a worker, nothing was dispatched.
            assert sample(gw, "gateway_request_latency_seconds_count", model="a") == 0
            assert errors_total(gw) == 2
        assert wa.received == [] and wb.received == []
        await wa.stop()
        await wb.stop()

    run(scenario)


def test_routes_by_model_least_outstanding_under_caps() -> None:
    async def scenario() -> None:
        a1, a2 = await FakeWorker(model="a").start(), await FakeWorker(model="a").start()
        b1 = await FakeWorker(model="b").start()
        cfg = config({"a": [("a1", a1.url, 2), ("a2", a2.url, 3)], "b": [("b1", b1.url, 1)]},
                     queue_size=10)
        for fake in (a1, a2, b1):
            fake.hold()
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            tasks = [asyncio.create_task(post(s, gw, model="a")) for _ in range(6)]
            tasks.append(asyncio.create_task(post(s, gw, model="b")))
            await a1.wait_in_flight(2)
            await a2.wait_in_flight(3)
            await b1.wait_in_flight(1)
            # The sixth request for "a" waits in the gateway's queue: both caps are full.
            assert sample(gw, "gateway_queue_depth", model="a") == 1
            assert sample(gw, "gateway_queue_depth", model="b") == 0
            await asyncio.sleep(0.05)
            assert (a1.max_in_flight, a2.max_in_flight, b1.max_in_flight) == (2, 3, 1)
            for fake in (a1, a2, b1):
                fake.release()
            results = await asyncio.gather(*tasks)
            assert [r[0] for r in results] == [200] * 7
            assert sample(gw, "gateway_queue_depth", model="a") == 0
            assert sample(gw, "gateway_requests_total", model="a", code="200") == 6
            assert sample(gw, "gateway_requests_total", model="b", code="200") == 1
            assert sample(gw, "gateway_queue_wait_seconds_count", model="a") == 6
            assert {r.model for r in b1.received} == {"b"}
            assert len(a1.received) + len(a2.received) == 6
            # Least outstanding: a1 holds what it gets, a2 answers at once. Sent one after
            # another, requests after the first held one all go to a2 (0 in flight), where
            # round robin would send every other one to a1.
            a1.hold()
            a1_before, a2_before = len(a1.received), len(a2.received)
            held: list[asyncio.Task[tuple[int, dict[str, str], bytes]]] = []
            for _ in range(6):
                task = asyncio.create_task(post(s, gw, model="a"))
                await wait_until(lambda: len(a1.received) + len(a2.received)
                                 > a1_before + a2_before + len(held))
                held.append(task)
            assert len(a1.received) - a1_before == 1
            assert len(a2.received) - a2_before == 5
            a1.release()
            assert [(await t)[0] for t in held] == [200] * 6
            assert errors_total(gw) == 0
        for fake in (a1, a2, b1):
            await fake.stop()

    run(scenario)


def test_sse_chunks_pass_through_unbuffered() -> None:
    async def scenario() -> None:
        w = await FakeWorker(model="m", chunks=4).start()
        gate = w.gate_chunks()
        cfg = config({"m": [("w", w.url, 1)]})
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            async with s.post(api(gw), json={"model": "m", "stream": True}) as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/event-stream")
                first = await r.content.readuntil(b"\n\n")
                # The first event is here while the worker is still held before the second.
                assert first.startswith(b"data: ") and b"t0" in first
                assert w.completed == 0 and w.in_flight == 1
                gate.set()
                rest = await r.read()
            events = [e for e in (first + rest).split(b"\n\n") if e]
            assert len(events) == 5 and events[-1] == b"data: [DONE]"
            assert sample(gw, "gateway_requests_total", model="m", code="200") == 1
            assert sample(gw, "gateway_request_latency_seconds_count", model="m") == 1
            assert errors_total(gw) == 0
        await w.stop()

    run(scenario)


def test_upstream_5xx_and_4xx_pass_through_without_retry() -> None:
    async def scenario() -> None:
        w1, w2 = await FakeWorker(model="m").start(), await FakeWorker(model="m").start()
        w1.status = w2.status = 500
        cfg = config({"m": [("w1", w1.url, 1), ("w2", w2.url, 1)]})
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            status, _, body = await post(s, gw)
            assert status == 500 and b"fake failure" in body
            assert len(w1.received) + len(w2.received) == 1  # not retried
            w1.status = w2.status = 401
            status, _, _ = await post(s, gw)
            assert status == 401
            assert sample(gw, "gateway_errors_total", model="m", reason="upstream_5xx") == 1
            assert sample(gw, "gateway_errors_total", model="m", reason="upstream_4xx") == 1
            assert sample(gw, "gateway_requests_total", model="m", code="500") == 1
            assert sample(gw, "gateway_requests_total", model="m", code="401") == 1
            assert sample(gw, "gateway_request_latency_seconds_count", model="m") == 2
            assert errors_total(gw) == 2
            # A 5xx answer is the worker's answer: it stays up.
            assert sample(gw, "gateway_worker_up", worker="w1", model="m") == 1
        await w1.stop()
        await w2.stop()

    run(scenario)


def test_client_disconnect_cancels_the_upstream_request() -> None:
    async def scenario() -> None:
        w = await FakeWorker(model="m").start()
        w.hold()
        cfg = config({"m": [("w", w.url, 1)]})
        async with gateway(cfg) as gw:
            session = aiohttp.ClientSession()
            task = asyncio.create_task(post(session, gw))
            await w.wait_in_flight(1)
            task.cancel()
            await session.close()  # the client is gone
            await w.wait_for("cancelled", 1)
            assert w.completed == 0
            async with aiohttp.ClientSession() as s, s.get(admin(gw, "/admin/workers/w")) as r:
                state = await r.json()
            assert state["in_flight"] == 0  # the slot came back
            await asyncio.sleep(0)
            assert sample(gw, "gateway_errors_total", model="m",
                          reason="client_disconnect") == 1
            assert sample(gw, "gateway_requests_total", model="m", code="499") == 1
            assert errors_total(gw) == 1
            w.release()
            async with aiohttp.ClientSession() as s:
                assert (await post(s, gw))[0] == 200
        await w.stop()

    run(scenario)
