"""Many fake vLLM workers in one process: one asyncio listener per port, real HTTP/1.1.

The scale benchmark starts a few of these processes (python -m postcheck.testing.aiofleet
--count 50 ...); each prints one JSON line {"ports": [...]} once every port listens, then
serves until SIGTERM/SIGINT (or, with --watch-stdin, until its stdin pipe closes). A thread
per connection (http.server) would need thousands of threads for a 200-worker fleet under
load; one event loop per process fits a 2-core machine. Request handling is
fakes.VLLMState's, the same as the unit tests' FakeVLLM: /health, /metrics, /version,
/v1/models, /v1/completions, /fake/state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence

from postcheck.testing.fakes import (
    PRODUCTION_PER_TOKEN_S,
    PRODUCTION_SLOTS,
    PRODUCTION_TTFT_S,
    Completion,
    Reply,
    VLLMState,
)

MAX_HEADER = 65536
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}


class Worker:
    def __init__(self, state: VLLMState, delay: float) -> None:
        self.state = state
        self.delay = delay
        self.slots = asyncio.Condition()

    async def run(self, job: Completion) -> Reply:
        async with self.slots:
            self.state.enqueue(job)
            await self.slots.wait_for(self.state.has_slot)
            self.state.begin(job)
        if job.hang:
            await asyncio.Event().wait()  # a hung engine: never answers
        await asyncio.sleep(self.state.duration(job, self.delay))
        async with self.slots:
            reply = self.state.finish(job)
            self.slots.notify()
        return reply

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, target, version = lines[0].split(" ", 2)
                except ValueError:
                    return
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    key, sep, value = line.partition(":")
                    if sep:
                        headers[key.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else None
                path = target.split("?", 1)[0]
                result = self.state.route(method, path, headers.get("authorization"), body)
                reply = await self.run(result) if isinstance(result, Completion) else result
                close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
                data = reply.body.encode()
                writer.write(
                    (
                        f"HTTP/1.1 {reply.code} {REASONS.get(reply.code, 'Error')}\r\n"
                        f"Content-Type: {reply.ctype}\r\n"
                        f"Content-Length: {len(data)}\r\n"
                        f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
                    ).encode()
                    + data
                )
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:  # shutting down (re-raising makes 3.11 log each one)
            return
        finally:
            writer.close()


async def serve(
    count: int,
    host: str,
    model: str,
    capacity: int,
    delay: float,
    version: str | None,
    api_key: str | None,
    watch_stdin: bool = False,
    per_token_s: float = 0.0,
) -> None:
    servers = []
    ports = []
    for _ in range(count):
        state = VLLMState(
            model,
            capacity,
            api_key=api_key,
            version=version,
            record_bodies=False,
            per_token_s=per_token_s,
        )
        worker = Worker(state, delay)
        server = await asyncio.start_server(
            worker.serve, host, 0, backlog=1024, limit=MAX_HEADER, reuse_address=True
        )
        servers.append(server)
        ports.append(server.sockets[0].getsockname()[1])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if watch_stdin:

        def wait_for_eof() -> None:  # EOF on stdin (a pipe from the parent): the parent is gone
            while os.read(0, 4096):
                pass
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=wait_for_eof, daemon=True).start()
    print(json.dumps({"ports": ports}), flush=True)
    await stop.wait()
    for server in servers:
        server.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*(s.wait_closed() for s in servers)), 2)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, required=True, help="workers (ports) in this process")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--model", default="tiny")
    p.add_argument("--capacity", type=int, default=2, help="plays --max-num-seqs")
    p.add_argument(
        "--delay", type=float, default=0.1, help="seconds a completion runs before its tokens"
    )
    p.add_argument(
        "--per-token",
        type=float,
        default=0.0,
        help="seconds per generated token (max_tokens of the request); "
        f"{PRODUCTION_PER_TOKEN_S} with --delay {PRODUCTION_TTFT_S} --capacity "
        f"{PRODUCTION_SLOTS}: a production GPU instance",
    )
    p.add_argument("--version", help="what /version says (default: the pinned release)")
    p.add_argument("--api-key")
    p.add_argument("--watch-stdin", action="store_true", help="stop when stdin (a pipe) closes")
    a = p.parse_args(argv)
    asyncio.run(
        serve(
            a.count,
            a.host,
            a.model,
            a.capacity,
            a.delay,
            a.version,
            a.api_key,
            a.watch_stdin,
            a.per_token,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
