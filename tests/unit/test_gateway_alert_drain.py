"""POST /admin/alerts (Alertmanager's webhook, gateway/alerts.py) on the real gateway, against
FakeWorker (fakes, not vLLM): drain alerts drain a host's workers and undo only their own drains."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import pytest
from gateway_fakes import FakeWorker, admin, config, gateway, post, run, sample

from gateway.server import Gateway

Payload = dict[str, Any]


def alert(status: str, host: str, alertname: str = "GpuXidError",
          **labels: str) -> dict[str, Any]:
    """One alert as Alertmanager's webhook sends it."""
    return {"status": status,
            "labels": {"alertname": alertname, "host": host, "action": "drain_host",
                       "severity": "page", **labels},
            "annotations": {}, "startsAt": "2026-12-08T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-12-08T10:05:00Z",
            "generatorURL": "", "fingerprint": f"{alertname}-{host}"}


def payload(*alerts: dict[str, Any]) -> Payload:
    firing = any(a["status"] == "firing" for a in alerts)
    return {"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0,
            "status": "firing" if firing else "resolved", "receiver": "gateway-drain",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://am:9093", "alerts": list(alerts)}


async def send(s: aiohttp.ClientSession, gw: Gateway, body: Any) -> tuple[int, dict[str, Any]]:
    async with s.post(admin(gw, "/admin/alerts"), json=body) as r:
        return r.status, await r.json()


async def ok(s: aiohttp.ClientSession, gw: Gateway, body: Payload) -> dict[str, Any]:
    status, answer = await send(s, gw, body)
    assert status == 200, answer
    return answer


def draining(gw: Gateway) -> dict[str, bool]:
    return {w.name: w.draining for w in gw.all_workers()}


async def three_workers() -> tuple[list[FakeWorker], Any]:
    """gpu1 with two instances, gpu2 with one, one pool; and the gateway's config."""
    fakes = [await FakeWorker(model="m").start() for _ in range(3)]
    cfg = config({"m": [("gpu1/a", fakes[0].url, 4), ("gpu1/b", fakes[1].url, 4),
                        ("gpu2/a", fakes[2].url, 4)]})
    return fakes, cfg


def test_firing_drains_that_host_only_a_repeat_changes_nothing_resolved_undrains(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway")

    async def scenario() -> None:
        fakes, cfg = await three_workers()
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            status, body = await send(s, gw, payload(alert("firing", "gpu1")))
            assert status == 200, body
            assert body == {"drained": ["gpu1/a", "gpu1/b"], "undrained": [], "ignored": 0,
                            "holding": {"gpu1/a": ["GpuXidError"], "gpu1/b": ["GpuXidError"]}}
            assert draining(gw) == {"gpu1/a": True, "gpu1/b": True, "gpu2/a": False}
            assert sample(gw, "gateway_worker_up", worker="gpu1/a", model="m") == 0
            assert sample(gw, "gateway_worker_up", worker="gpu2/a", model="m") == 1
            # The gateway keeps serving, from gpu2 only.
            before = [len(f.received) for f in fakes]
            for _ in range(5):
                assert (await post(s, gw))[0] == 200
            assert [len(f.received) - b for f, b in zip(fakes, before, strict=True)] == [0, 0, 5]

            # Alertmanager repeats the firing alert: nothing changes.
            status, body = await send(s, gw, payload(alert("firing", "gpu1")))
            assert (status, body["drained"], body["undrained"]) == (200, [], [])
            assert draining(gw) == {"gpu1/a": True, "gpu1/b": True, "gpu2/a": False}

            status, body = await send(s, gw, payload(alert("resolved", "gpu1")))
            assert status == 200, body
            assert body == {"drained": [], "undrained": ["gpu1/a", "gpu1/b"], "ignored": 0,
                            "holding": {}}
            assert draining(gw) == {"gpu1/a": False, "gpu1/b": False, "gpu2/a": False}
            assert sample(gw, "gateway_worker_up", worker="gpu1/a", model="m") == 1
            # Resolved again (Alertmanager's next notification of the group): nothing.
            assert (await send(s, gw, payload(alert("resolved", "gpu1"))))[1]["undrained"] == []
        for f in fakes:
            await f.stop()

    run(scenario)
    events = [(r.getMessage(), getattr(r, "fields", {})) for r in caplog.records
              if r.getMessage().startswith("alert_")]
    assert [(e, f["alert"], f["host"], f["workers"]) for e, f in events] == [
        ("alert_drain", "GpuXidError", "gpu1", ["gpu1/a", "gpu1/b"]),
        ("alert_undrain", "GpuXidError", "gpu1", ["gpu1/a", "gpu1/b"]),
    ]
    assert events[0][1]["drained"] == ["gpu1/a", "gpu1/b"]
    assert events[1][1]["undrained"] == ["gpu1/a", "gpu1/b"]


def test_a_worker_drained_by_hand_stays_drained() -> None:
    async def scenario() -> None:
        fakes, cfg = await three_workers()
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            async with s.post(admin(gw, "/admin/workers/gpu1/b/drain")) as r:
                assert r.status == 200
            body = await ok(s, gw, payload(alert("firing", "gpu1")))
            assert body["drained"] == ["gpu1/a"]  # gpu1/b was drained already, by hand
            assert body["holding"] == {"gpu1/a": ["GpuXidError"], "gpu1/b": ["GpuXidError"]}
            body = await ok(s, gw, payload(alert("resolved", "gpu1")))
            assert body["undrained"] == ["gpu1/a"]
            assert draining(gw) == {"gpu1/a": False, "gpu1/b": True, "gpu2/a": False}

            # Drained by the alert, then by hand while it fires: the operator's from then on.
            await ok(s, gw, payload(alert("firing", "gpu2")))
            async with s.post(admin(gw, "/admin/workers/gpu2/a/drain")) as r:
                assert r.status == 200
            async with s.get(admin(gw, "/admin/alerts")) as r:
                assert await r.json() == {"holding": {"gpu2/a": ["GpuXidError"]},
                                          "drained_by_alerts": []}
            body = await ok(s, gw, payload(alert("resolved", "gpu2")))
            assert (body["undrained"], draining(gw)["gpu2/a"]) == ([], True)
        for f in fakes:
            await f.stop()

    run(scenario)


def test_two_alerts_on_one_host_undrain_only_when_both_resolved() -> None:
    async def scenario() -> None:
        fakes, cfg = await three_workers()
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            xid = alert("firing", "gpu1", "GpuXidError", gpu="0")
            ecc = alert("firing", "gpu1", "GpuEccDoubleBit", gpu="1")
            body = await ok(s, gw, payload(xid))
            assert body["drained"] == ["gpu1/a", "gpu1/b"]
            # One group notification carries both; the first is a repeat.
            body = await ok(s, gw, payload(xid, ecc))
            assert body["drained"] == []
            assert body["holding"]["gpu1/a"] == ["GpuEccDoubleBit", "GpuXidError"]
            body = await ok(s, gw, payload({**xid, "status": "resolved"}, ecc))
            assert (body["undrained"], body["holding"]["gpu1/b"]) == ([], ["GpuEccDoubleBit"])
            assert draining(gw) == {"gpu1/a": True, "gpu1/b": True, "gpu2/a": False}
            body = await ok(s, gw, payload({**ecc, "status": "resolved"}))
            assert body["undrained"] == ["gpu1/a", "gpu1/b"]
            assert draining(gw) == {"gpu1/a": False, "gpu1/b": False, "gpu2/a": False}
        for f in fakes:
            await f.stop()

    run(scenario)


def test_alerts_without_the_drain_label_or_a_host_are_ignored_and_counted() -> None:
    async def scenario() -> None:
        fakes, cfg = await three_workers()
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            plain = alert("firing", "gpu1", "NodeDiskAlmostFull")
            del plain["labels"]["action"]
            hostless = alert("firing", "gpu1", "GpuXidError")
            del hostless["labels"]["host"]
            other = alert("firing", "gpu1", "GpuThermal", action="page_only")
            # A host whose name only starts like gpu1's: not a gpu1 worker.
            prefix = alert("firing", "gpu")
            status, body = await send(s, gw, payload(plain, hostless, other, prefix))
            assert (status, body) == (200, {"drained": [], "undrained": [], "ignored": 3,
                                            "holding": {}})
            assert not any(draining(gw).values())
        for f in fakes:
            await f.stop()

    run(scenario)


MALFORMED: list[tuple[str, Any, str]] = [
    ("not an object", ["alerts"], "the body must be a JSON object, got list"),
    ("no version", {"status": "firing", "alerts": []},
     "version: None, Alertmanager's webhook payload is version '4'"),
    ("version 3", {"version": "3", "status": "firing", "alerts": []},
     "version: '3', Alertmanager's webhook payload is version '4'"),
    ("bad group status", {"version": "4", "status": "pending", "alerts": []},
     "status: 'pending' is neither firing nor resolved"),
    ("alerts missing", {"version": "4", "status": "firing"},
     "alerts: must be a list, got NoneType"),
    ("alert not an object", {**payload(), "alerts": ["x"]},
     "alerts[0]: must be an object, got str"),
    ("alert status", payload({**alert("firing", "gpu1"), "status": "active"}),
     "alerts[0].status: 'active' is neither firing nor resolved"),
    ("labels a list", payload({**alert("firing", "gpu1"), "labels": ["host"]}),
     "alerts[0].labels: must be an object, got list"),
    ("label not a string", payload({**alert("firing", "gpu1"), "labels": {"host": 1}}),
     "alerts[0].labels.host: must be a string, got 1"),
    ("fingerprint a number", payload({**alert("firing", "gpu1"), "fingerprint": 7}),
     "alerts[0].fingerprint: must be a string, got 7"),
]


def test_malformed_payloads_answer_400_naming_what_is_wrong_and_change_nothing() -> None:
    async def scenario() -> None:
        fakes, cfg = await three_workers()
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            for name, body, message in MALFORMED:
                # A good firing alert first in the list: nothing applies when a later one is bad.
                if isinstance(body, dict) and isinstance(body.get("alerts"), list):
                    body = {**body, "alerts": [alert("firing", "gpu1"), *body["alerts"]]}
                    message = message.replace("alerts[0]", "alerts[1]")
                status, answer = await send(s, gw, body)
                assert (status, answer) == (400, {"error": message}), name
            async with s.post(admin(gw, "/admin/alerts"), data=b"{not json") as r:
                assert r.status == 400
                assert (await r.json())["error"].startswith("the body is not JSON: ")
            assert not any(draining(gw).values())
        for f in fakes:
            await f.stop()

    run(scenario)
