"""The vllm-gateway process itself (a subprocess) in front of FakeWorker (a fake, not vLLM):
its two ports, and SIGTERM: new work refused with 503, in-flight requests finish, exit 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from gateway_fakes import FakeWorker, families, run

SCRIPT = Path(sys.executable).with_name("vllm-gateway")


async def start_gateway(tmp_path: Path, worker: FakeWorker, shutdown_timeout_s: float,
                        ) -> tuple[asyncio.subprocess.Process, str, str, list[dict[str, Any]]]:
    cfg = {
        "api": {"host": "127.0.0.1", "port": 0},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "shutdown_timeout_s": shutdown_timeout_s,
        "health": {"interval_s": 0.1, "timeout_s": 0.1},
        "pools": [{"model": "m", "workers": [{"name": "w", "url": worker.url, "capacity": 2}]}],
    }
    path = tmp_path / "gateway.yml"
    path.write_text(yaml.safe_dump(cfg))
    proc = await asyncio.create_subprocess_exec(SCRIPT, "--config", str(path),
                                                stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    log: list[dict[str, Any]] = []
    while True:
        line = await proc.stderr.readline()
        assert line, "the gateway exited before it started"
        log.append(json.loads(line))
        if log[-1]["event"] == "started":
            break
    api, metrics = f"http://{log[-1]['api']}", f"http://{log[-1]['metrics']}"
    async with aiohttp.ClientSession() as s:
        while True:
            async with s.get(f"{metrics}/admin/workers/w") as r:
                if (await r.json())["ready"]:
                    break
            await asyncio.sleep(0.02)
    return proc, api, metrics, log


async def read_log(proc: asyncio.subprocess.Process, log: list[dict[str, Any]]) -> None:
    assert proc.stderr is not None
    for line in (await proc.stderr.read()).splitlines():
        log.append(json.loads(line))


def test_sigterm_refuses_new_work_and_lets_in_flight_requests_finish(tmp_path: Path) -> None:
    async def scenario() -> None:
        worker = await FakeWorker(model="m").start()
        proc, api, metrics, log = await start_gateway(tmp_path, worker, 30)
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{metrics}/metrics") as r:
                fams = families(await r.text())
            assert len(fams) == 6
            async with s.get(f"{api}/metrics") as r:
                assert r.status == 404  # /metrics is not on the API port
            worker.hold()
            body = {"model": "m", "prompt": "x"}
            in_flight = asyncio.create_task(s.post(f"{api}/v1/completions", json=body))
            await worker.wait_in_flight(1)
            proc.send_signal(signal.SIGTERM)
            async with aiohttp.ClientSession() as fresh:
                while True:  # until the signal has been handled
                    async with fresh.get(f"{metrics}/health") as r:
                        if r.status == 503:
                            break
                    await asyncio.sleep(0.01)
                async with fresh.post(f"{api}/v1/completions", json=body) as r:
                    assert r.status == 503
                    assert r.headers["Retry-After"] == "1"
                    assert (await r.json())["error"]["code"] == 503
            assert proc.returncode is None  # still draining
            worker.release()
            response = await in_flight
            assert response.status == 200
            assert (await response.json())["object"] == "text_completion"
            response.release()
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        await read_log(proc, log)
        events = [e["event"] for e in log]
        assert "shutting_down" in events
        assert log[-1] == {**log[-1], "event": "stopped", "drained": True}
        codes = sorted(e["code"] for e in log if e["event"] == "request")
        assert codes == [200, 404, 503]  # the completion, GET /metrics, the refusal
        await worker.stop()

    run(scenario)


def test_sigterm_exits_0_after_the_shutdown_timeout(tmp_path: Path) -> None:
    async def scenario() -> None:
        worker = await FakeWorker(model="m").start()
        proc, api, _metrics, log = await start_gateway(tmp_path, worker, 0.3)
        worker.hold()
        async with aiohttp.ClientSession() as s:
            in_flight = asyncio.create_task(s.post(f"{api}/v1/completions",
                                                   json={"model": "m", "prompt": "x"}))
            await worker.wait_in_flight(1)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
            try:
                response = await in_flight
                status = response.status
            except aiohttp.ClientError:
                status = None  # cut: the request outlived the shutdown timeout
            assert status is None
        await worker.wait_for("cancelled", 1)  # and the worker's request was aborted
        await read_log(proc, log)
        assert next(e for e in log if e["event"] == "stopped")["drained"] is False
        worker.release()
        await worker.stop()

    run(scenario)


def test_ready_is_notified_once_it_routes_and_stopping_on_sigterm(tmp_path: Path) -> None:
    """Type=notify (roles/gateway's unit): READY=1 reaches $NOTIFY_SOCKET only after the
    ports listen and the first health check found the worker ready, so `systemctl restart`
    returns to a gateway that routes; STOPPING=1 on SIGTERM."""

    async def scenario() -> None:
        worker = await FakeWorker(model="m").start()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(tmp_path / "notify"))
        sock.setblocking(False)
        cfg = {
            "api": {"host": "127.0.0.1", "port": 0},
            "metrics": {"host": "127.0.0.1", "port": 0},
            "health": {"interval_s": 30, "timeout_s": 1},  # no check after the first
            "pools": [{"model": "m", "workers": [{"name": "w", "url": worker.url,
                                                  "capacity": 2}]}],
        }
        (tmp_path / "gateway.yml").write_text(yaml.safe_dump(cfg))
        proc = await asyncio.create_subprocess_exec(
            SCRIPT, "--config", str(tmp_path / "gateway.yml"), stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")})
        loop = asyncio.get_running_loop()
        ready = await asyncio.wait_for(loop.sock_recv(sock, 64), 15)
        assert ready == b"READY=1"
        assert proc.stderr is not None
        started = json.loads(await proc.stderr.readline())
        assert started["event"] in ("worker_state", "started")
        lines = [started]
        while lines[-1]["event"] != "started":
            lines.append(json.loads(await proc.stderr.readline()))
        api = f"http://{lines[-1]['api']}"
        async with aiohttp.ClientSession() as s, s.post(
                f"{api}/v1/completions", json={"model": "m", "prompt": "x"}) as r:
            assert r.status == 200  # at once: no wait for a health interval (30 s here)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(loop.sock_recv(sock, 64), 15) == b"STOPPING=1"
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        sock.close()
        await worker.stop()

    run(scenario)
