"""The public API port: route by model, admit through the pool's queue, stream the answer back.

* ``POST /v1/...`` with a JSON body naming ``model``: proxied to a worker of that model's pool.
* ``GET /v1/models``: the configured models (README: "/v1/models").
* ``GET /health``: 200 while some worker is ready and the gateway is not shutting down.

Bodies are passed through unchanged, chunk by chunk in both directions (SSE included); so are
the client's headers, ``Authorization`` included, except hop-by-hop ones.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway.metrics import NO_MODEL
from gateway.pool import AdmissionError, Pool, Worker

if TYPE_CHECKING:
    from gateway.server import Gateway

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length",
})
ADMISSION_STATUS = {"queue_full": 429, "queue_timeout": 503, "no_worker": 503}
CLIENT_CLOSED = 499  # nginx's code for "the client closed the connection first"
WHOLE_BODY_MAX = 1024 * 1024  # plain answers up to this size are relayed in one write


@dataclass
class Exchange:
    """What happened to one client request: the access log entry and the metric updates."""

    request_id: str
    method: str
    path: str
    started: float
    model: str = NO_MODEL
    code: int = 0
    reason: str | None = None
    worker: str | None = None
    dispatched: bool = False
    queue_wait_s: float = 0.0
    connect_retries: int = 0
    counted: bool = True  # False for /health probes


def error_body(status: int, message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


class Api:
    """The handlers of the API port, bound to one Gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.gw.config.max_body_bytes)
        app.router.add_get("/v1/models", self._wrap(self.models))
        app.router.add_get("/health", self._wrap(self.health))
        app.router.add_route("*", "/{tail:.*}", self._wrap(self.proxy))
        return app

    def _wrap(self, handler: Any) -> Any:
        async def run(request: web.Request) -> web.StreamResponse:
            ex = Exchange(request.headers.get("X-Request-Id") or uuid.uuid4().hex,
                          request.method, request.path, time.monotonic())
            # Requests refused after SIGTERM do not hold the shutdown up.
            active = not self.gw.stopping
            if active:
                self.gw.request_started()
            try:
                response: web.StreamResponse = await handler(request, ex)
                return response
            except Exception:
                # A bug, not a client's or a worker's doing: logged, counted, answered 500.
                self.gw.log.exception("internal_error")
                ex.code, ex.reason = 500, "internal_error"
                return web.json_response(error_body(500, "Internal gateway error",
                                                    "InternalServerError"), status=500)
            except asyncio.CancelledError:
                # The client disconnected (aiohttp cancels the handler), or the shutdown
                # timeout ran out with this request still in flight.
                ex.reason = "shutting_down" if self.gw.aborting else "client_disconnect"
                ex.code = CLIENT_CLOSED
                raise
            finally:
                self.gw.request_finished(ex, active)

        return run

    def _error(self, ex: Exchange, status: int, reason: str, message: str, kind: str,
               retry_after: bool = False, param: str | None = None) -> web.Response:
        ex.code, ex.reason = status, reason
        response = web.json_response(error_body(status, message, kind, param), status=status)
        if retry_after:
            response.headers["Retry-After"] = str(self.gw.config.retry_after_s)
        if self.gw.stopping:
            response.force_close()
        return response

    async def models(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        ex.code = 200
        data = [{"id": model, "object": "model", "created": self.gw.started_at,
                 "owned_by": "vllm-gateway"} for model in self.gw.pools]
        return web.json_response({"object": "list", "data": data})

    async def health(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        ex.counted = False
        ready = not self.gw.stopping and any(p.has_ready() for p in self.gw.pools.values())
        ex.code = 200 if ready else 503
        return web.json_response({"status": "ok" if ready else "unavailable"}, status=ex.code)

    async def proxy(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        if self.gw.stopping:
            return self._error(ex, 503, "shutting_down", "The gateway is shutting down",
                               "ServiceUnavailableError", retry_after=True)
        if request.method != "POST" or not request.path.startswith("/v1/"):
            return self._error(ex, 404, "bad_request", f"No route {request.method} "
                               f"{request.path}", "NotFoundError")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._error(ex, 413, "bad_request", "The request body is too large",
                               "BadRequestError")
        try:
            parsed = json.loads(body)
            model = parsed.get("model")
        except (ValueError, AttributeError):
            model = None
        if not isinstance(model, str):
            return self._error(ex, 400, "bad_request", "The body must be a JSON object "
                               "naming a model", "BadRequestError", param="model")
        pool = self.gw.pools.get(model)
        if pool is None:
            return self._error(ex, 404, "unknown_model", f"The model `{model}` does not "
                               "exist.", "NotFoundError", param="model")
        ex.model = model
        # prefix_affinity pools: the key from the body parsed above (gateway/routing.py).
        key = pool.key(request.headers, request.path, parsed)
        try:
            worker = await pool.acquire(pool.queue_timeout_s, key=key)
        except AdmissionError as exc:
            messages = {"queue_full": "The gateway's queue is full",
                        "queue_timeout": "No worker slot became free in time",
                        "no_worker": "No worker is ready for this model"}
            status = ADMISSION_STATUS[exc.reason]
            return self._error(ex, status, exc.reason, messages[exc.reason],
                               "RateLimitError" if status == 429 else "ServiceUnavailableError",
                               retry_after=True)
        ex.dispatched = True
        ex.queue_wait_s = time.monotonic() - ex.started
        self.gw.metrics.dispatched(model, ex.queue_wait_s)
        return await self._forward(request, body, pool, worker, ex, key)

    def _upstream_headers(self, request: web.Request, ex: Exchange) -> CIMultiDict[str]:
        # Case-insensitive, like HTTP: a client's "content-type" is not sent twice.
        headers = CIMultiDict((k, v) for k, v in request.headers.items()
                              if k.lower() not in HOP_BY_HOP)
        headers["X-Request-Id"] = ex.request_id
        if "Content-Type" not in headers:
            headers["Content-Type"] = "application/json"
        peer = request.remote
        if peer:
            prior = headers.get("X-Forwarded-For")
            headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        return headers

    async def _connect(self, request: web.Request, body: bytes, pool: Pool, worker: Worker,
                       ex: Exchange, key: str | None,
                       ) -> tuple[Worker, aiohttp.ClientResponse | None]:
        """Sends the request; on a connect failure (no byte sent) retries on another worker.

        Returns the worker holding the slot and its response (None after ``ex`` got an error).
        """
        headers = self._upstream_headers(request, ex)
        while True:
            ex.worker = worker.name
            try:
                response = await self.gw.session.request(
                    request.method, worker.url + request.path_qs, headers=headers, data=body,
                    allow_redirects=False)
                return worker, response
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
                self.gw.worker_failed(worker, "connect")
                if ex.connect_retries >= self.gw.config.connect_retries:
                    break
                ex.connect_retries += 1
                pool.release(worker)
                remaining = pool.queue_timeout_s - (time.monotonic() - ex.started)
                try:
                    worker = await pool.acquire(max(remaining, 0.001), front=True, key=key)
                except AdmissionError:
                    # The slot was already given back: hand the caller a worker-less result.
                    ex.code, ex.reason = 502, "upstream_connect"
                    raise
        ex.code, ex.reason = 502, "upstream_connect"
        return worker, None

    async def _forward(self, request: web.Request, body: bytes, pool: Pool, worker: Worker,
                       ex: Exchange, key: str | None = None) -> web.StreamResponse:
        held: Worker | None = worker
        upstream: aiohttp.ClientResponse | None = None
        response: web.StreamResponse | None = None
        # A hung worker (gateway/stall.py) ends this request through its deadline.
        watched = self.gw.stall.watch(ex, request.headers.get("Authorization"))
        try:
            async with asyncio.timeout(pool.request_timeout_s) as deadline:
                watched.deadline = deadline
                try:
                    held, upstream = await self._connect(request, body, pool, worker, ex, key)
                except AdmissionError:
                    held = None
                if upstream is None:
                    return self._error(ex, 502, "upstream_connect", "No worker could be "
                                       "reached", "ServiceUnavailableError", retry_after=True)
                assert held is not None
                progress = held  # its last_bytes: the stall watch's sign of life
                progress.last_bytes = time.monotonic()
                ex.code = upstream.status
                if upstream.status >= 500:
                    ex.reason = "upstream_5xx"
                elif upstream.status >= 400:
                    ex.reason = "upstream_4xx"
                headers = CIMultiDict((k, v) for k, v in upstream.headers.items()
                                      if k.lower() not in HOP_BY_HOP)
                length = upstream.content_length
                if length is not None and length <= WHOLE_BODY_MAX:
                    # A plain answer of known, small size (a non-streamed completion): read
                    # whole and written in one go. Streams (SSE: no Content-Length) and large
                    # bodies take the chunk-by-chunk path below.
                    data = await upstream.read()
                    progress.last_bytes = time.monotonic()
                    upstream.release()
                    return web.Response(status=upstream.status, reason=upstream.reason,
                                        body=data, headers=headers)
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                              headers=headers)
                if length is not None:
                    response.content_length = length
                try:
                    await response.prepare(request)
                    async for chunk in upstream.content.iter_any():
                        progress.last_bytes = time.monotonic()
                        await response.write(chunk)
                    await response.write_eof()
                except ConnectionError:
                    # Writing to the client failed: it went away. (aiohttp's errors reading
                    # from the worker are ClientErrors, not ConnectionErrors.)
                    ex.code, ex.reason = CLIENT_CLOSED, "client_disconnect"
                    upstream.close()  # the worker sees the disconnect and aborts
                    return response
                upstream.release()
                return response
        except TimeoutError:
            if not deadline.expired():
                raise
            if watched.aborted:
                return self._cut(request, ex, response, "worker_stalled", 504,
                                 "The worker stopped making progress (no answer to a canary "
                                 "request); it is out of rotation", retry_after=True)
            return self._cut(request, ex, response, "upstream_timeout", 504,
                             "The worker did not answer within request_timeout_s")
        except aiohttp.ClientError:
            # Bytes were sent (or the worker answered part of it): no retry.
            if held is not None:
                self.gw.worker_failed(held, "disconnect")
            return self._cut(request, ex, response, "upstream_disconnect", 502,
                             "The worker closed the connection mid-request")
        finally:
            self.gw.stall.unwatch(watched)
            if upstream is not None:
                upstream.close()
            if held is not None:
                pool.release(held)

    def _cut(self, request: web.Request, ex: Exchange, response: web.StreamResponse | None,
             reason: str, status: int, message: str,
             retry_after: bool = False) -> web.StreamResponse:
        """An upstream failure: a clean error if nothing was sent yet, else a cut connection,
        so the client cannot take a truncated answer for a complete one."""
        if response is None or not response.prepared:
            return self._error(ex, status, reason, message,
                               "GatewayTimeoutError" if status == 504 else "BadGatewayError",
                               retry_after=retry_after)
        ex.reason = reason
        if request.transport is not None:
            request.transport.abort()
        return response
