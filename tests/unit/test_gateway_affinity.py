"""Prefix-cache affinity (gateway/routing.py) through the real gateway against FakeWorker
(fakes, not vLLM): a key keeps its worker, keys spread, the load bound holds under a shared
key, a worker taken out moves only its keys and gets them back, the session header wins, the
shared system prompt is skipped, the queue keeps its order; and every refused option."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from gateway_fakes import FakeWorker, admin, api, config, gateway, run, wait_until

from gateway.cli import main
from gateway.config import ConfigError, PoolConfig, WorkerConfig, parse
from gateway.pool import Pool
from gateway.routing import Affinity, RoutingConfig, key_hash, request_key
from gateway.server import Gateway

REPO = Path(__file__).resolve().parents[2]
AFFINITY: dict[str, Any] = {"mode": "prefix_affinity"}
SYSTEM = "You are a helpful assistant. " * 4  # 116 characters every request shares


async def fakes(n: int, **kwargs: Any) -> list[FakeWorker]:
    return [await FakeWorker(model="m", **kwargs).start() for _ in range(n)]


def pool_config(workers: list[FakeWorker], capacity: int = 64,
                routing: dict[str, Any] | None = None, **overrides: Any) -> Any:
    return config({"m": [(f"w{i}", w.url, capacity) for i, w in enumerate(workers)]},
                  routing=AFFINITY if routing is None else routing, **overrides)


async def route(s: aiohttp.ClientSession, gw: Gateway, workers: list[FakeWorker],
                path: str = "/v1/completions", headers: dict[str, str] | None = None,
                **body: Any) -> int:
    """Sends one request (nothing else in flight) and says which worker answered it."""
    before = [len(w.received) for w in workers]
    async with s.post(api(gw, path), json={"model": "m", **body}, headers=headers) as r:
        assert r.status == 200, await r.text()
    grew = [i for i, w in enumerate(workers) if len(w.received) > before[i]]
    assert len(grew) == 1, grew
    return grew[0]


async def stop(workers: list[FakeWorker]) -> None:
    for w in workers:
        await w.stop()


def test_same_key_same_worker_and_1000_keys_spread_over_4_workers() -> None:
    async def scenario() -> None:
        ws = await fakes(4)
        async with gateway(pool_config(ws)) as gw, aiohttp.ClientSession() as s:
            homes = [await route(s, gw, ws, prompt=f"session {i}: tell me about {i * 7}")
                     for i in range(1000)]
            shares = [homes.count(i) / len(homes) for i in range(4)]
            print(f"\n1000 keys over 4 workers: {[f'{x:.1%}' for x in shares]}")
            assert all(0.15 <= x <= 0.35 for x in shares), shares
            # The same key again: the same worker, every time.
            again = [await route(s, gw, ws, prompt=f"session {i}: tell me about {i * 7}")
                     for i in range(0, 1000, 50)]
            assert again == homes[::50]
            # A chat: the messages in order are the key.
            chat = [{"role": "user", "content": [{"type": "text", "text": "a long question"}]}]
            first = await route(s, gw, ws, "/v1/chat/completions", messages=chat)
            for _ in range(5):
                assert await route(s, gw, ws, "/v1/chat/completions", messages=chat) == first
        await stop(ws)

    run(scenario, timeout_s=120)


def test_the_ring_is_the_same_in_every_process() -> None:
    """blake2b, not Python's per-process salted hash(): another interpreter (another hash
    seed) sends every key to the same worker, so two gateways, or one after a restart, route
    alike."""
    names = ["lt-a/main", "lt-b/main", "lt-c/main"]
    keys = [f"conversation {i}" for i in range(200)]
    affinity = Affinity(RoutingConfig(mode="prefix_affinity"), names)
    here = [affinity.ring.first(key_hash(k)) for k in keys]
    code = ("import json, sys; from gateway.routing import Ring, key_hash; "
            "names, keys = json.load(sys.stdin); "
            "print(json.dumps([Ring(names).first(key_hash(k)) for k in keys]))")
    other = subprocess.run([sys.executable, "-c", code], input=json.dumps([names, keys]),
                           capture_output=True, text=True, check=True, cwd=REPO,
                           env={**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)})
    assert json.loads(other.stdout) == here
    assert set(here) == {0, 1, 2}


@pytest.mark.parametrize("load_factor, most", [(1.25, 5), (100.0, 16)])
def test_one_shared_key_never_puts_a_worker_above_the_bound(load_factor: float,
                                                            most: int) -> None:
    """16 requests of one prompt held in flight on 4 workers: with load factor 1.25 no worker
    holds more than ceil(1.25 x 16 / 4) = 5; with 100 (no bound to speak of) the key's worker
    takes all 16, which is the failure the bound prevents."""
    async def scenario() -> None:
        ws = await fakes(4)
        for w in ws:
            w.hold()
        cfg = pool_config(ws, routing={**AFFINITY, "load_factor": load_factor})
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            tasks = [asyncio.create_task(s.post(api(gw), json={"model": "m",
                                                               "prompt": SYSTEM}))
                     for _ in range(16)]
            await wait_until(lambda: sum(w.in_flight for w in ws) == 16)
            async with s.get(admin(gw, "/admin/workers")) as r:
                seen = [w["in_flight"] for w in (await r.json())["workers"]]
            print(f"\nload factor {load_factor}: in flight per worker {seen}")
            assert max(seen) == most and sum(seen) == 16
            assert [w.max_in_flight for w in ws] == seen
            for w in ws:
                w.release()
            for response in await asyncio.gather(*tasks):
                assert response.status == 200
                response.release()
        await stop(ws)

    run(scenario)


def test_a_closed_loop_on_one_shared_key_stays_within_the_bound() -> None:
    """16 clients, one prompt, answers taking 20 ms: placement after placement, no worker
    goes above ceil(1.25 x 16 / 4) = 5 (the most the mean can reach is 16 / 4)."""
    async def scenario() -> None:
        ws = await fakes(4, delay_s=0.02)
        async with gateway(pool_config(ws)) as gw, aiohttp.ClientSession() as s:
            async def client() -> None:
                for _ in range(10):
                    async with s.post(api(gw), json={"model": "m", "prompt": SYSTEM}) as r:
                        assert r.status == 200
                        await r.read()

            await asyncio.gather(*(client() for _ in range(16)))
        peaks = [w.max_in_flight for w in ws]
        served = [len(w.received) for w in ws]
        print(f"\nclosed loop: peak in flight {peaks}, served {served}")
        assert sum(served) == 160
        assert max(peaks) <= math.ceil(1.25 * 16 / 4)
        await stop(ws)

    run(scenario, timeout_s=60)


def test_a_drained_or_down_worker_s_keys_move_and_come_back() -> None:
    async def scenario() -> None:
        ws = await fakes(3)
        prompts = [f"conversation {i}" for i in range(30)]
        async with gateway(pool_config(ws)) as gw, aiohttp.ClientSession() as s:
            async def homes() -> list[int]:
                return [await route(s, gw, ws, prompt=p) for p in prompts]

            before = await homes()
            assert set(before) == {0, 1, 2}, before
            async with s.post(admin(gw, "/admin/workers/w0/drain")) as r:
                assert r.status == 200
            drained = await homes()
            # w0's keys went elsewhere; every other key stayed where it was.
            assert 0 not in drained
            assert [d for b, d in zip(before, drained, strict=True) if b != 0] == \
                [b for b in before if b != 0]
            async with s.post(admin(gw, "/admin/workers/w0/undrain")) as r:
                assert r.status == 200
            await wait_until(lambda: gw.pools["m"].workers[0].ready)
            assert await homes() == before
            ws[1].healthy = False  # down by its health checks
            await wait_until(lambda: not gw.pools["m"].workers[1].ready)
            down = await homes()
            assert 1 not in down
            assert [d for b, d in zip(before, down, strict=True) if b != 1] == \
                [b for b in before if b != 1]
            ws[1].healthy = True
            await wait_until(lambda: gw.pools["m"].workers[1].ready)
            assert await homes() == before
        await stop(ws)

    run(scenario, timeout_s=60)


def test_a_growing_conversation_keeps_its_worker() -> None:
    """Six turns of 12 conversations, each past the skipped system prompt longer than
    prefix_chars from its first turn (the default 256): every turn of a conversation goes to
    its first turn's worker, which holds its prefix in cache."""
    async def scenario() -> None:
        ws = await fakes(3)
        skip = len("system") + 2 + len(SYSTEM)
        cfg = pool_config(ws, routing={**AFFINITY, "prefix_skip_chars": skip})
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            homes = []
            for c in range(12):
                messages = [{"role": "system", "content": SYSTEM},
                            {"role": "user", "content": f"Conversation {c}: " + "context " * 40}]
                turns = []
                for turn in range(6):
                    turns.append(await route(s, gw, ws, "/v1/chat/completions",
                                             messages=messages))
                    messages = [*messages, {"role": "assistant", "content": f"answer {turn}"},
                                {"role": "user", "content": f"question {turn}"}]
                assert len(set(turns)) == 1, (c, turns)
                homes.append(turns[0])
            assert len(set(homes)) > 1, homes
        await stop(ws)

    run(scenario)


def test_the_session_header_wins_over_the_prompt() -> None:
    async def scenario() -> None:
        ws = await fakes(3)
        cfg = pool_config(ws, routing={**AFFINITY, "session_header": "X-Session-Id"})
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            # One session, different prompts: one worker.
            one = {await route(s, gw, ws, headers={"x-session-id": "abc"}, prompt=f"turn {i}")
                   for i in range(10)}
            assert len(one) == 1
            # One prompt, different sessions: spread.
            many = {await route(s, gw, ws, headers={"X-Session-Id": f"s{i}"}, prompt="same")
                    for i in range(20)}
            assert len(many) > 1
            # No header: the prompt is the key again.
            assert len({await route(s, gw, ws, prompt="same") for _ in range(5)}) == 1
        await stop(ws)

    run(scenario)


def test_the_shared_system_prompt_is_skipped() -> None:
    async def scenario() -> None:
        ws = await fakes(3)
        users = [SYSTEM + f"user {i} asks" for i in range(20)]
        skip = {**AFFINITY, "prefix_skip_chars": len(SYSTEM), "prefix_chars": 12}
        async with gateway(pool_config(ws, routing=skip)) as gw, \
                aiohttp.ClientSession() as s:
            assert len({await route(s, gw, ws, prompt=p) for p in users}) > 1
            # Past skip + prefix_chars nothing counts: one worker.
            tails = {await route(s, gw, ws, prompt=SYSTEM + f"user 1 asks {i}")
                     for i in range(10)}
            assert len(tails) == 1
        async with gateway(pool_config(ws, routing={**AFFINITY, "prefix_chars": 64})) as gw, \
                aiohttp.ClientSession() as s:
            # Without the skip the shared part is the whole key: one worker for all.
            assert len({await route(s, gw, ws, prompt=p) for p in users}) == 1
        await stop(ws)

    run(scenario)


def test_the_queue_keeps_its_order_whatever_the_keys() -> None:
    """Two workers of 1 slot, both busy, 6 queued requests whose keys home on both: as w0's
    slot frees, the head of the queue takes it each time (FIFO before affinity)."""
    async def scenario() -> None:
        ws = await fakes(2)
        for w in ws:
            w.hold()
        cfg = pool_config(ws, capacity=1, queue_size=10)
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            async def send(prompt: str) -> int:
                async with s.post(api(gw), json={"model": "m", "prompt": prompt}) as r:
                    await r.read()
                    return r.status

            busy = [asyncio.create_task(send(f"busy {i}")) for i in range(2)]
            await wait_until(lambda: ws[0].in_flight == 1 and ws[1].in_flight == 1)
            queued = []
            names = [f"queued {i}" for i in range(6)]
            affinity = Affinity(gw.pools["m"].routing, ["w0", "w1"])
            homes = {affinity.ring.first(key_hash(n)) for n in names}
            assert homes == {0, 1}, "the test needs keys homed on both workers"
            for i, name in enumerate(names):
                queued.append(asyncio.create_task(send(name)))
                await wait_until(lambda i=i: gw.pools["m"].depth == i + 1)
            ws[0].release()
            assert await asyncio.gather(*queued) == [200] * 6
            assert [r.prompt for r in ws[0].received][1:] == names
            ws[1].release()
            assert await asyncio.gather(*busy) == [200, 200]
        await stop(ws)

    run(scenario)


def test_a_freed_slot_goes_to_the_head_waiter_s_own_worker() -> None:
    """The real Pool, no HTTP: both workers full, two waiters whose keys home on w1 and w0;
    when both slots free at once, each waiter gets its key's worker, in queue order."""
    async def scenario() -> None:
        workers = tuple(WorkerConfig(f"w{i}", f"http://127.0.0.1:{9000 + i}", 1)
                        for i in range(2))
        pool = Pool(PoolConfig("m", workers, routing=RoutingConfig(mode="prefix_affinity")))
        for w in pool.workers:
            w.healthy = True
        first = [await pool.acquire(1.0, key=str(i)) for i in range(2)]
        assert sorted(w.name for w in first) == ["w0", "w1"]
        affinity = Affinity(pool.routing, ["w0", "w1"])
        to_w1 = next(k for k in map(str, range(100)) if affinity.ring.first(key_hash(k)) == 1)
        to_w0 = next(k for k in map(str, range(100)) if affinity.ring.first(key_hash(k)) == 0)
        a = asyncio.create_task(pool.acquire(1.0, key=to_w1))
        b = asyncio.create_task(pool.acquire(1.0, key=to_w0))
        await wait_until(lambda: pool.depth == 2)
        for w in pool.workers:
            w.in_flight -= 1
        pool.dispatch()
        assert ((await a).name, (await b).name) == ("w1", "w0")

    run(scenario)


# ---------------------------------------------------------------------------- the key
def _key(body: dict[str, Any], path: str = "/v1/completions",
         headers: dict[str, str] | None = None, **routing: Any) -> str | None:
    return request_key(RoutingConfig(mode="prefix_affinity", **routing), headers or {}, path,
                       body)


def test_the_key_of_each_prompt_shape() -> None:
    assert _key({"prompt": "abcdef"}, prefix_chars=3, prefix_skip_chars=1) == "bcd"
    assert _key({"prompt": ["first", "second"]}, prefix_chars=4) == "firs"
    # Token ids: their repr, so the first characters are the first ids.
    assert _key({"prompt": [101, 2023, 2003]}, prefix_chars=8) == "[101, 20"
    assert _key({"prompt": [[7, 8], [9]]}) == "[7, 8]"
    chat = {"messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": [{"type": "text", "text": "hi "},
                                                      {"type": "image_url"},
                                                      {"type": "text", "text": "there"}]}]}
    assert _key(chat, "/v1/chat/completions") == "system\x1fbe brief\x1euser\x1fhi there\x1e"
    assert _key(chat, "/v1/chat/completions", prefix_skip_chars=16, prefix_chars=4) == "user"
    # Nothing left past the skip, no prompt, another endpoint: least outstanding.
    assert _key({"prompt": "short"}, prefix_skip_chars=5) is None
    assert _key({"input": "embed me"}, "/v1/embeddings") is None
    assert _key({"prompt": 42}) is None
    # The session header, matched case-insensitively by aiohttp's headers; empty is ignored.
    assert _key({"prompt": "x"}, headers={"X-Session": "s1"}, session_header="X-Session") \
        == "\x00session\x00s1"
    assert _key({"prompt": "x"}, headers={"X-Session": ""}, session_header="X-Session") == "x"


def test_least_outstanding_pools_compute_no_key() -> None:
    pool = Pool(PoolConfig("m", (WorkerConfig("w", "http://127.0.0.1:9", 1),)))
    assert pool.key({"X-Session-Id": "s"}, "/v1/completions", {"prompt": "abc"}) is None


# ---------------------------------------------------------------------------- refusals
def _pools(routing: Any) -> dict[str, Any]:
    return {"pools": [{"model": "m", "routing": routing, "workers": [
        {"name": "w0", "url": "http://10.0.0.5:8000", "capacity": 4}]}]}


def _errors(routing: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(_pools(routing))
    return caught.value.errors


REFUSED = [
    ({"mode": "round_robin"}, "pools[0].routing.mode: must be one of least_outstanding, "
     "prefix_affinity, got 'round_robin'"),
    ({"load_factor": 1}, "pools[0].routing.load_factor: must be a finite number above 1 (a "
     "worker may take this many times the pool's mean in-flight requests), got 1"),
    ({"load_factor": 0.5}, "pools[0].routing.load_factor: must be a finite number above 1"),
    ({"load_factor": "1.5"}, "pools[0].routing.load_factor: must be a finite number above 1 "
     "(a worker may take this many times the pool's mean in-flight requests), got '1.5'"),
    ({"load_factor": float("inf")}, "pools[0].routing.load_factor: must be a finite number"),
    ({"prefix_chars": 0}, "pools[0].routing.prefix_chars: must be an integer >= 1 "
     "(characters), got 0"),
    ({"prefix_chars": 2.5}, "pools[0].routing.prefix_chars: must be an integer >= 1 "
     "(characters), got 2.5"),
    ({"prefix_skip_chars": -1}, "pools[0].routing.prefix_skip_chars: must be an integer >= 0 "
     "(characters), got -1"),
    ({"session_header": "X Session"}, "pools[0].routing.session_header: must be an HTTP header "
     "name (letters, digits and !#$%&'*+.^_`|~-) or null, got 'X Session'"),
    ({"session_header": ""}, "pools[0].routing.session_header: must be an HTTP header name"),
    ({"prefix_bytes": 10}, "pools[0].routing.prefix_bytes: unknown option (known: mode, "
     "load_factor, prefix_chars, prefix_skip_chars, session_header)"),
    ("prefix_affinity", "pools[0].routing: must be a mapping, got str"),
]


@pytest.mark.parametrize("routing, message", REFUSED, ids=[m.split(":")[0] + " " + repr(r)
                                                           for r, m in REFUSED])
def test_config_refuses_bad_routing_naming_the_option(routing: Any, message: str) -> None:
    errors = _errors(routing)
    assert len(errors) == 1 and errors[0].startswith(message), errors


def test_config_defaults_and_check_config_lists_every_refusal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pool = parse(_pools(None)).pools[0]
    assert pool.routing == RoutingConfig("least_outstanding", 1.25, 256, 0, None)
    good = parse(_pools({"mode": "prefix_affinity", "load_factor": 2, "prefix_chars": 512,
                         "prefix_skip_chars": 300, "session_header": "X-Session-Id"}))
    assert good.pools[0].routing == RoutingConfig("prefix_affinity", 2.0, 512, 300,
                                                  "X-Session-Id")
    bad = tmp_path / "gateway.yml"
    bad.write_text(yaml.safe_dump(_pools({"mode": "hash", "load_factor": 1.0,
                                          "prefix_chars": 0, "prefix_skip_chars": -5,
                                          "session_header": "a:b"})))
    assert main(["--check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    for option, value in (("mode", "'hash'"), ("load_factor", "1.0"), ("prefix_chars", "0"),
                          ("prefix_skip_chars", "-5"), ("session_header", "'a:b'")):
        assert f"pools[0].routing.{option}: " in err and f"got {value}" in err, err
