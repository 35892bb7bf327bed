"""LatencyLink: a TCP relay that delays every byte, and the close, by a fixed time each way.

It stands for the network between the gateway and a worker, for the tests: with a one-way
latency L, a worker that closes an idle connection at T is seen to do so by the gateway only at
T + L, and a request the gateway writes at T - L arrives after the close and is lost. That is
the race a gateway keeping idle connections longer than its workers runs into (one round trip
wide), made as wide as the test wants. Each relayed connection is counted (``accepted``), so a
test sees whether the gateway reused one.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

CHUNK = 65536


@dataclass
class LatencyLink:
    """Listens on 127.0.0.1; relays each connection to ``target_port`` with ``delay_s`` of
    latency in both directions, a close included. Run in the caller's event loop."""

    target_port: int
    delay_s: float
    accepted: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> LatencyLink:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        """Stops listening and resets every relayed connection (both ends)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _relay(self, client_r: asyncio.StreamReader,
                     client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(client_w)
        try:
            try:
                target_r, target_w = await asyncio.open_connection("127.0.0.1",
                                                                   self.target_port)
            except OSError:
                client_w.transport.abort()
                return
            self._writers.add(target_w)
            await asyncio.gather(self._pump(client_r, target_w), self._pump(target_r, client_w))
            self._writers.discard(target_w)
        finally:
            self._writers.discard(client_w)
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One direction: what is read at t is written at t + delay_s, in order; the end of
        the stream (a close) too. Writes after the far end closed are lost, as on a wire."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    writer.close()
                    return
                if not writer.is_closing():
                    writer.write(data)

        sender = asyncio.create_task(deliver())
        try:
            while True:
                try:
                    data = await reader.read(CHUNK)
                except ConnectionError:
                    data = b""
                queue.put_nowait((loop.time() + self.delay_s, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            writer.close()
