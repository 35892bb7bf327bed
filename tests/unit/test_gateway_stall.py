"""Hung engines against FakeWorker (fakes, not vLLM): a frozen worker (``/health`` 200, nothing
answered, like a SIGSTOPped EngineCore) is taken out by the canary, its stuck requests answered
once each as worker_stalled; a slow but alive one is left alone; the options are checked.

Detection and recovery times are printed, not asserted (``pytest -s`` shows them)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from gateway_fakes import (
    FakeWorker,
    api,
    config,
    errors_total,
    gateway,
    post,
    run,
    sample,
    wait_until,
)

from gateway.cli import main
from gateway.config import ConfigError, parse
from gateway.server import Gateway

# Silence of 0.3 s starts a canary; 0.3 s without its answer takes the worker out.
STALL = {"interval_s": 0.05, "timeout_s": 0.05, "rise": 2, "fall": 2, "stall_s": 0.3,
         "canary_timeout_s": 0.3}


def canaries(worker: FakeWorker) -> int:
    return sum(1 for r in worker.received if (r.request_id or "").startswith("gateway-canary-"))


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == name]


def up(gw: Gateway, worker: str) -> float:
    return sample(gw, "gateway_worker_up", worker=worker, model="m")


def test_frozen_worker_is_taken_out_and_each_stuck_request_answered_once(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway")

    async def scenario() -> None:
        a = await FakeWorker(model="m").start()
        # b is busy but alive: 30-token answers take it 1.5 s, a canary 0.05 s.
        b = await FakeWorker(model="m", token_delay_s=0.05).start()
        cfg = config({"m": [("a", a.url, 4), ("b", b.url, 4)]}, health=STALL)
        gate = a.gate_chunks()
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            # A stream on a, its first chunk through to the client; then a freezes ...
            stream = await s.post(api(gw), json={"model": "m", "stream": True},
                                  headers={"Authorization": "Bearer client-key"})
            assert stream.status == 200
            await stream.content.readuntil(b"\n\n")
            a.freeze()
            gate.set()  # the stream's next chunk now waits on the freeze
            # ... and two plain requests on each worker: a's never answered, b's slow.
            plain = [asyncio.create_task(post(s, gw, max_tokens=30)) for _ in range(4)]
            await a.wait_in_flight(3)
            await b.wait_in_flight(2)
            started = time.monotonic()
            await wait_until(lambda: up(gw, "a") == 0, timeout_s=10)
            detected_s = time.monotonic() - started
            print(f"\nfrozen worker out after {detected_s:.3f} s (stall_s 0.3 + canary_timeout_s"
                  f" 0.3 + a check of {gw.stall.tick_s:.3f} s)")
            assert gw.find_worker("a").stalled  # type: ignore[union-attr]
            assert up(gw, "b") == 1
            # a's two plain requests: 504 worker_stalled with Retry-After; b's still running.
            await wait_until(lambda: sum(t.done() for t in plain) == 2)
            stuck = [t.result() for t in plain if t.done()]
            assert [r[0] for r in stuck] == [504, 504]
            for _status, headers, body in stuck:
                assert headers["Retry-After"] == "1"
                error = json.loads(body)["error"]
                assert error["code"] == 504 and "canary" in error["message"]
            # The stream had sent its 200: it is cut, never ended as if complete.
            with pytest.raises(aiohttp.ClientPayloadError):
                await stream.read()
            stream.release()
            # /health said 200 throughout: only the canary saw the hang.
            async with s.get(f"{a.url}/health") as health:
                assert health.status == 200
            # The canary carried the Authorization of a request in flight on a.
            canary = next(r for r in a.received if (r.request_id or "").startswith("gateway-"))
            assert (canary.path, canary.model, canary.max_tokens) == ("/v1/completions", "m", 1)
            assert canary.authorization == "Bearer client-key"
            # Admitted after the detection: all on b, all answered.
            fresh = await asyncio.gather(*(post(s, gw) for _ in range(6)))
            assert [r[0] for r in fresh] == [200] * 6
            assert sorted([(await t)[0] for t in plain]) == [200, 200, 504, 504]
            assert len(b.received) - canaries(b) == 2 + 6
            assert len(a.received) - canaries(a) == 3  # the stream and two plain, nothing new
            # Each stuck request counted once, under one reason.
            assert sample(gw, "gateway_errors_total", model="m", reason="worker_stalled") == 3
            assert errors_total(gw) == 3
            assert sample(gw, "gateway_requests_total", model="m", code="504") == 2
            assert sample(gw, "gateway_requests_total", model="m", code="200") == 1 + 2 + 6
            # Still frozen: the recovery canaries go unanswered, it stays out.
            await asyncio.sleep(0.5)
            assert up(gw, "a") == 0
            # Thawed: back after `rise` (2) canaries answered in a row.
            a.unfreeze()
            thawed = time.monotonic()
            before = a.completed
            await wait_until(lambda: up(gw, "a") == 1, timeout_s=10)
            print(f"thawed worker back after {time.monotonic() - thawed:.3f} s")
            assert a.completed - before >= 2
            assert not gw.find_worker("a").stalled  # type: ignore[union-attr]
            again = await asyncio.gather(*(post(s, gw) for _ in range(4)))
            assert [r[0] for r in again] == [200] * 4
            assert len(a.received) - canaries(a) > 3  # it takes requests again
        stalled = events(caplog, "worker_stalled")
        assert len(stalled) == 1
        assert (stalled[0]["worker"], stalled[0]["aborted"]) == ("a", 3)
        assert stalled[0]["silent_s"] >= 0.6
        recovered = events(caplog, "worker_stall_recovered")
        assert [(e["worker"], e["rise"]) for e in recovered] == [("a", 2)]
        assert "client-key" not in caplog.text  # the borrowed credential is never logged
        await a.stop()
        await b.stop()

    run(scenario)


def test_slow_but_alive_worker_answers_the_canary_and_stays_in(
        caplog: pytest.LogCaptureFixture) -> None:
    """Long non-streamed generations send nothing for longer than stall_s; the canary, one
    token, is answered at once: the worker is not taken out."""
    caplog.set_level(logging.INFO, logger="gateway")

    async def scenario() -> None:
        slow = await FakeWorker(model="m", token_delay_s=0.06).start()
        cfg = config({"m": [("slow", slow.url, 4)]}, health=STALL)
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            lowest = [1.0]

            async def watch() -> None:
                while True:
                    lowest[0] = min(lowest[0], up(gw, "slow"))
                    await asyncio.sleep(0.01)

            watcher = asyncio.create_task(watch())
            started = time.monotonic()
            # 25 tokens at 0.06 s: 1.5 s without a byte, five times stall_s.
            results = await asyncio.gather(*(post(s, gw, max_tokens=25) for _ in range(3)))
            took = time.monotonic() - started
            watcher.cancel()
            print(f"\nslow answers after {took:.3f} s, {canaries(slow)} canaries answered")
            assert [r[0] for r in results] == [200] * 3
            assert lowest[0] == 1
            assert canaries(slow) >= 1  # the silence was noticed, and the canary answered
            assert errors_total(gw) == 0
            assert not gw.find_worker("slow").stalled  # type: ignore[union-attr]
        assert events(caplog, "worker_stalled") == []
        assert events(caplog, "canary_ok")
        await slow.stop()

    run(scenario)


def test_canary_unanswered_while_other_answers_arrive_is_no_stall(
        caplog: pytest.LogCaptureFixture) -> None:
    """A full batch: the canary waits in vLLM's queue for a running request to finish, but
    the bytes of the other answers prove progress; the worker stays in."""
    caplog.set_level(logging.INFO, logger="gateway")

    async def scenario() -> None:
        # A stream chunk every 0.6 s; the canary, 0.6 s too, misses its 0.4 s timeout. The
        # canary goes out 0.4-0.45 s after a chunk, gives up 0.8-0.85 s after it: the next
        # chunk, at 0.6 s, falls in between.
        busy = await FakeWorker(model="m", delay_s=0.6, chunks=3).start()
        health = {**STALL, "stall_s": 0.4, "canary_timeout_s": 0.4}
        cfg = config({"m": [("busy", busy.url, 4)]}, health=health)
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            async with s.post(api(gw), json={"model": "m", "stream": True}) as stream:
                body = await stream.read()
            assert stream.status == 200 and body.endswith(b"data: [DONE]\n\n")
            assert up(gw, "busy") == 1
            assert errors_total(gw) == 0
        late = events(caplog, "canary_late")
        print(f"\n{len(late)} canaries unanswered in time while the stream progressed")
        assert late
        assert events(caplog, "worker_stalled") == []
        await busy.stop()

    run(scenario)


VALID: dict[str, Any] = {"pools": [{"model": "m", "workers": [
    {"name": "w", "url": "http://10.0.0.5:8000", "capacity": 8}]}]}


def _errors(health: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse({**VALID, "health": health})
    return caught.value.errors


def test_defaults_and_refusals_name_the_option() -> None:
    cfg = parse(VALID)
    assert (cfg.health.stall_s, cfg.health.canary_timeout_s) == (120.0, 60.0)
    assert parse({**VALID, "health": {"stall_s": 5, "canary_timeout_s": 5}}).health.stall_s == 5
    assert _errors({"stall_s": 0}) == [
        "health.stall_s: must be a finite number of seconds > 0, got 0"]
    assert _errors({"stall_s": -3, "canary_timeout_s": 0}) == [
        "health.stall_s: must be a finite number of seconds > 0, got -3",
        "health.canary_timeout_s: must be a finite number of seconds > 0, got 0"]
    assert _errors({"stall_s": 10, "canary_timeout_s": 15}) == [
        "health.canary_timeout_s: must not exceed health.stall_s (15 > 10): a worker is taken "
        "out after stall_s of silence and a canary unanswered for canary_timeout_s"]
    # The default canary timeout (60) above a short stall_s is refused too.
    assert _errors({"stall_s": 30})[0].startswith(
        "health.canary_timeout_s: must not exceed health.stall_s (60 > 30)")
    assert _errors({"stall": 5}) == [
        "health.stall: unknown option (known: canary_timeout_s, fall, interval_s, rise, "
        "stall_s, timeout_s)"]


def test_check_config_refuses_naming_the_option(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "gateway.yml"
    bad.write_text(yaml.safe_dump({**VALID, "health": {"stall_s": 0}}))
    assert main(["--check-config", str(bad)]) == 2
    assert "health.stall_s: must be a finite number of seconds > 0, got 0" in \
        capsys.readouterr().err
    bad.write_text(yaml.safe_dump({**VALID, "health": {"stall_s": 5, "canary_timeout_s": 6}}))
    assert main(["--check-config", str(bad)]) == 2
    assert "health.canary_timeout_s: must not exceed health.stall_s (6 > 5)" in \
        capsys.readouterr().err
