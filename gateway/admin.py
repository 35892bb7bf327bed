"""The metrics and admin port (default 8080), kept apart from the public API port.

* ``GET /metrics``: the six gateway_* families.
* ``GET /health``: 200 {"status": "ok"} while serving, 503 {"status": "shutting_down"} after
  SIGTERM (a liveness check of the gateway process itself, not of its workers).
* ``GET /admin/workers``: every worker's state (model, url, capacity, healthy, draining, ready,
  in_flight).
* ``GET /admin/workers/{name}``: one worker's state; 404 for an unknown name.
* ``POST /admin/workers/{name}/drain[?wait=SECONDS]``: the worker gets no new requests; with
  ``wait``, the answer comes when its in-flight requests reach 0 or after SECONDS. 200 when none
  is in flight any more, 202 while some still are (the body says how many).
* ``POST /admin/workers/{name}/undrain``: the worker takes requests again (once healthy).
* ``POST /admin/alerts``: Alertmanager's webhook; drain alerts drain and undrain a host's
  workers (gateway/alerts.py). ``GET /admin/alerts``: which alerts hold which workers.

Worker names contain ``/`` (``gpu1/main``): the route takes the rest of the path, so both
``/admin/workers/gpu1/main/drain`` and the URL-encoded ``gpu1%2Fmain`` work.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

from aiohttp import web

from gateway import alerts

if TYPE_CHECKING:
    from gateway.server import Gateway

ACTIONS = ("drain", "undrain")


class Admin:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.alert_drains = alerts.AlertDrains(gateway.all_workers, gateway.set_draining,
                                               gateway.log)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", self.health)
        app.router.add_get("/admin/workers", self.workers)
        app.router.add_route("*", "/admin/workers/{rest:.+}", self.worker)
        app.router.add_post("/admin/alerts", self.post_alerts)
        app.router.add_get("/admin/alerts", self.get_alerts)
        return app

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.gw.metrics.exposition(),
                            content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def health(self, request: web.Request) -> web.Response:
        if self.gw.stopping:
            return web.json_response({"status": "shutting_down"}, status=503)
        return web.json_response({"status": "ok"})

    async def workers(self, request: web.Request) -> web.Response:
        return web.json_response({"workers": [w.state() for w in self.gw.all_workers()]})

    async def worker(self, request: web.Request) -> web.Response:
        rest = request.match_info["rest"]
        name, action = rest, None
        head, _, tail = rest.rpartition("/")
        if tail in ACTIONS and head:
            name, action = head, tail
        worker = self.gw.find_worker(name)
        if worker is None:
            return web.json_response({"error": f"no worker named {name!r}"}, status=404)
        if action is None:
            if request.method != "GET":
                raise web.HTTPMethodNotAllowed(request.method, ["GET"])
            return web.json_response(worker.state())
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["POST"])
        if action == "undrain":
            self.alert_drains.operator_set(worker)
            self.gw.set_draining(worker, False)
            return web.json_response(worker.state())
        try:
            wait_s = float(request.query.get("wait", "0"))
        except ValueError:
            return web.json_response({"error": "wait must be a number of seconds"}, status=400)
        self.alert_drains.operator_set(worker)
        self.gw.set_draining(worker, True)
        deadline = time.monotonic() + max(0.0, min(wait_s, 3600.0))
        while worker.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return web.json_response(worker.state(), status=202 if worker.in_flight else 200)

    async def post_alerts(self, request: web.Request) -> web.Response:
        try:
            data = json.loads(await request.read())
        except ValueError as e:
            return web.json_response({"error": f"the body is not JSON: {e}"}, status=400)
        try:
            parsed = alerts.parse_payload(data)
        except alerts.PayloadError as e:
            return web.json_response({"error": str(e)}, status=400)
        outcome = self.alert_drains.apply(parsed)
        return web.json_response(outcome.answer(self.alert_drains.holding()))

    async def get_alerts(self, request: web.Request) -> web.Response:
        return web.json_response(alerts.summary(self.alert_drains))
