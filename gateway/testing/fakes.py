"""FakeWorker: a fake vLLM (OpenAI-compatible) worker for the gateway's tests and benchmark.

It is not vLLM. It answers ``/health``, ``/v1/models``, ``/v1/completions`` and
``/v1/chat/completions`` (plain JSON, or SSE with ``"stream": true``), after a configurable
delay, and records what it received (paths, ``Authorization``), how many requests it has in
flight, and how many were cancelled by a disconnecting client. Tests can hold requests (``hold``),
fail them (``status``), make ``/health`` fail, kill it abruptly (``kill``: connections reset,
port closed, like kill -9), or freeze it (``freeze``: like a SIGSTOPped vLLM engine, ``/health``
still answers 200 while no completion, a canary included, gets an answer until ``unfreeze``).
Non-streamed answers can take ``token_delay_s`` per ``max_tokens`` (a long generation sends
nothing until it ends), so a one-token canary answers at once beside them.
Like vLLM's server (uvicorn, ``VLLM_HTTP_TIMEOUT_KEEP_ALIVE``) it
closes a connection idle for ``keepalive_s``; it can answer with a ``Set-Cookie`` (``set_cookie``)
and records the ``Cookie`` each request carried.

Run alone (the benchmark does): ``python -m gateway.testing.fakes --port 0 --delay-ms 0``; it
prints ``{"port": N}`` on stdout once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Received:
    path: str
    model: str | None
    authorization: str | None
    stream: bool
    content_types: list[str]
    cookie: str | None = None
    request_id: str | None = None  # X-Request-Id: the gateway's canaries are gateway-canary-*
    max_tokens: int | None = None
    prompt: Any = None  # the body's "prompt" (or "messages"), as sent


@dataclass
class FakeWorker:
    """A fake vLLM worker on 127.0.0.1, run in the caller's event loop."""

    model: str = "fake-model"
    delay_s: float = 0.0  # before the answer (and between SSE chunks)
    token_delay_s: float = 0.0  # more before a plain answer, per max_tokens (a generation)
    chunks: int = 3  # SSE data chunks before [DONE]
    healthy: bool = True
    status: int = 200  # answer completions with this status
    received: list[Received] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    completed: int = 0
    cancelled: int = 0
    health_checks: int = 0
    port: int = 0
    keepalive_s: float = 75.0  # closes a connection idle this long (aiohttp's default: 75)
    set_cookie: str | None = None  # e.g. "session=abc": answers carry this Set-Cookie
    host: str = "127.0.0.1"  # in url only: "localhost" gives a host name (cookies need one)

    def __post_init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._hold: asyncio.Event | None = None
        self._chunk_gate: asyncio.Event | None = None
        self._thaw: asyncio.Event | None = None
        self._requests: dict[int, web.BaseRequest] = {}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self, port: int | None = None) -> FakeWorker:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_post("/v1/chat/completions", self._complete)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                                     shutdown_timeout=0.1, keepalive_timeout=self.keepalive_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port if port is None else port,
                           reuse_address=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def kill(self) -> None:
        """Like kill -9: every open connection is reset, the port stops listening."""
        for request in list(self._requests.values()):
            if request.transport is not None:
                request.transport.abort()
        await self.stop()

    # ------------------------------------------------------------- test controls
    def hold(self) -> None:
        """Completions wait (in flight) until release()."""
        self._hold = asyncio.Event()

    def release(self) -> None:
        if self._hold is not None:
            self._hold.set()
            self._hold = None

    def freeze(self) -> None:
        """Like SIGSTOP of vLLM's engine process: /health still 200, completions (new ones and
        those in flight, at their next step) are accepted and never answered until unfreeze()."""
        if self._thaw is None:
            self._thaw = asyncio.Event()

    def unfreeze(self) -> None:
        if self._thaw is not None:
            self._thaw.set()
            self._thaw = None

    @property
    def frozen(self) -> bool:
        return self._thaw is not None

    async def _progress(self) -> None:
        """A step of the engine: waits while frozen."""
        while self._thaw is not None:
            await self._thaw.wait()

    def gate_chunks(self) -> asyncio.Event:
        """SSE answers send their first chunk, then wait for the returned event."""
        self._chunk_gate = asyncio.Event()
        return self._chunk_gate

    async def wait_in_flight(self, n: int, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while self.in_flight < n:
                await asyncio.sleep(0.005)

    async def wait_for(self, what: str, n: int, timeout_s: float = 10.0) -> None:
        """Waits until the counter ``what`` (completed, cancelled, health_checks) reaches n."""
        async with asyncio.timeout(timeout_s):
            while getattr(self, what) < n:
                await asyncio.sleep(0.005)

    # ------------------------------------------------------------- handlers
    async def _health(self, request: web.Request) -> web.Response:
        self.health_checks += 1
        return web.Response(status=200 if self.healthy else 503)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "owned_by": "fake"}]})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = await request.json()
        stream = bool(body.get("stream"))
        self.received.append(Received(request.path, body.get("model"),
                                      request.headers.get("Authorization"), stream,
                                      request.headers.getall("Content-Type", []),
                                      request.headers.get("Cookie"),
                                      request.headers.get("X-Request-Id"),
                                      body.get("max_tokens"),
                                      body.get("prompt", body.get("messages"))))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._requests[id(request)] = request
        try:
            await self._progress()
            if self._hold is not None:
                await self._hold.wait()
            await self._progress()
            if self.status != 200:
                return web.json_response({"error": {"message": "fake failure",
                                                    "code": self.status}}, status=self.status)
            if not stream:
                wait_s = self.delay_s + self.token_delay_s * int(body.get("max_tokens") or 1)
                if wait_s:
                    await asyncio.sleep(wait_s)
                await self._progress()
                self.completed += 1
                answer = web.json_response({
                    "id": "cmpl-fake", "object": "text_completion", "model": self.model,
                    "choices": [{"index": 0, "text": "fake", "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                })
                if self.set_cookie is not None:
                    answer.headers["Set-Cookie"] = self.set_cookie
                return answer
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for i in range(self.chunks):
                if i == 1 and self._chunk_gate is not None:
                    await self._chunk_gate.wait()
                elif self.delay_s:
                    await asyncio.sleep(self.delay_s)
                await self._progress()
                data = {"id": "cmpl-fake", "choices": [{"index": 0, "text": f"t{i}"}]}
                await response.write(f"data: {json.dumps(data)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            self.completed += 1
            return response
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
            self._requests.pop(id(request), None)


async def _serve(port: int, delay_s: float) -> None:
    worker = await FakeWorker(delay_s=delay_s).start(port)
    print(json.dumps({"port": worker.port}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await worker.stop()


def main() -> int:
    p = argparse.ArgumentParser(description="A fake vLLM worker (not vLLM) on 127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--delay-ms", type=float, default=0.0)
    args = p.parse_args()
    asyncio.run(_serve(args.port, args.delay_ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
