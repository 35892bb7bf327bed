"""Health checks (rise and fall) and the drain admin API, against FakeWorker (fakes, not vLLM)."""

from __future__ import annotations

import asyncio

import aiohttp
from gateway_fakes import FakeWorker, admin, config, gateway, post, run, sample, wait_until

from gateway.config import WorkerConfig
from gateway.health import mark_down, observe
from gateway.pool import Worker


def test_rise_and_fall_thresholds() -> None:
    w = Worker(WorkerConfig("w", "http://127.0.0.1:1", 1), "m")
    assert not w.ready
    assert observe(w, True, rise=3, fall=2)  # the first good check makes a new worker ready
    assert w.ready
    assert not observe(w, False, rise=3, fall=2)  # one bad check: still up
    assert w.ready
    assert observe(w, False, rise=3, fall=2)  # fall = 2 bad checks in a row: down
    assert not w.ready
    assert not observe(w, True, rise=3, fall=2)
    assert not observe(w, True, rise=3, fall=2)
    assert not observe(w, False, rise=3, fall=2)  # a bad check resets the good streak
    assert not observe(w, True, rise=3, fall=2)
    assert not observe(w, True, rise=3, fall=2)
    assert observe(w, True, rise=3, fall=2)  # rise = 3 good checks in a row: up
    assert mark_down(w)  # a connect failure: down at once ...
    assert not w.ready
    assert not observe(w, True, rise=3, fall=2)  # ... and back only after rise good checks
    assert not observe(w, True, rise=3, fall=2)
    assert observe(w, True, rise=3, fall=2)
    # A worker whose first check failed needs rise good checks too.
    late = Worker(WorkerConfig("late", "http://127.0.0.1:1", 1), "m")
    assert not observe(late, False, rise=2, fall=1)
    assert not observe(late, True, rise=2, fall=1)
    assert observe(late, True, rise=2, fall=1)


def test_active_checks_move_worker_up() -> None:
    async def scenario() -> None:
        w = await FakeWorker(model="m").start()
        w.healthy = False
        cfg = config({"m": [("w", w.url, 1)]}, health={"rise": 2, "fall": 3})
        async with gateway(cfg, ready=0) as gw:
            await w.wait_for("health_checks", 2)
            assert sample(gw, "gateway_worker_up", worker="w", model="m") == 0
            w.healthy = True
            seen = w.health_checks
            await wait_until(lambda: gw.all_workers()[0].ready)
            assert w.health_checks >= seen + 2  # rise
            assert sample(gw, "gateway_worker_up", worker="w", model="m") == 1
            w.healthy = False
            seen = w.health_checks
            await wait_until(lambda: not gw.all_workers()[0].ready)
            assert w.health_checks >= seen + 3  # fall
            assert sample(gw, "gateway_worker_up", worker="w", model="m") == 0
        await w.stop()

    run(scenario)


def test_drain_endpoint_stops_new_requests_and_reports_in_flight() -> None:
    async def scenario() -> None:
        a, b = await FakeWorker(model="m").start(), await FakeWorker(model="m").start()
        cfg = config({"m": [("gpu1/main", a.url, 4), ("gpu2/main", b.url, 4)]})
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            a.hold()
            b.hold()
            held = [asyncio.create_task(post(s, gw)) for _ in range(2)]
            await a.wait_in_flight(1)
            await b.wait_in_flight(1)
            async with s.post(admin(gw, "/admin/workers/gpu1/main/drain")) as r:
                assert r.status == 202  # still one in flight
                state = await r.json()
            assert state["draining"] and not state["ready"] and state["in_flight"] == 1
            assert sample(gw, "gateway_worker_up", worker="gpu1/main", model="m") == 0
            b.release()
            results = await asyncio.gather(*(post(s, gw) for _ in range(5)))
            assert [r[0] for r in results] == [200] * 5
            assert len(a.received) == 1  # the drained worker got nothing new
            # The API port does not serve the admin API.
            async with s.post(admin(gw, "/admin/workers/nope/drain")) as r:
                assert r.status == 404
            api_port = gw.api_address[1]
            async with s.post(f"http://127.0.0.1:{api_port}/admin/workers/gpu1/main/drain") as r:
                assert r.status == 404
            a.release()
            async with s.post(admin(gw, "/admin/workers/gpu1%2Fmain/drain?wait=10")) as r:
                assert r.status == 200
                assert (await r.json())["in_flight"] == 0
            async with s.get(admin(gw, "/admin/workers")) as r:
                states = {w["name"]: w for w in (await r.json())["workers"]}
            assert states["gpu1/main"]["in_flight"] == 0
            assert states["gpu1/main"]["draining"] and states["gpu1/main"]["healthy"]
            assert not states["gpu2/main"]["draining"]
            async with s.post(admin(gw, "/admin/workers/gpu1/main/undrain")) as r:
                assert r.status == 200
                assert (await r.json())["ready"]
            assert sample(gw, "gateway_worker_up", worker="gpu1/main", model="m") == 1
            assert [r[0] for r in await asyncio.gather(*held)] == [200, 200]
            await asyncio.gather(*(post(s, gw) for _ in range(4)))
            assert len(a.received) > 1  # back in rotation
        await a.stop()
        await b.stop()

    run(scenario)
