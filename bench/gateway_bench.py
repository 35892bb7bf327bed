"""Benchmark: the latency the gateway adds, its throughput, HAProxy as the anchor, and least
outstanding requests against round robin.

    .venv/bin/python bench/gateway_bench.py [--seconds 3] [--json]      (make bench-gateway)

(Not bench/gateway.py: run as a script, that name would shadow the gateway package on
sys.path, and mypy would see two modules named "gateway".)

Everything runs on 127.0.0.1, each in its own process: the fake backend (FakeWorker from
gateway/testing/fakes.py: a fake, not vLLM, answering a small JSON completion at once), the
vllm-gateway process (its real CLI, access log on, written to a file), HAProxy from Debian
(``balance leastconn``, ``nbthread 1``: one core, like the gateway's one asyncio process), and
the load generator (this process: aiohttp, closed loop, ``concurrency`` requests in flight).
The targets compared in a table take turns (4 slices each), so the machine's load at any
moment falls on all of them alike.

1. Added latency: p50 and p99 through the gateway minus the same direct to the backend, at
   concurrency 1, 64 and 256, with requests per second and CPU per request; the gateway twice,
   with its per-request access log (the default) and without (``--log-level warning``);
   HAProxy measured in the same run, and the gateway's added p50 as a ratio of HAProxy's.
   Without a haproxy binary its rows are skipped, and the output says so.
2. The same at concurrency 64 and 256 against a backend that takes PACED_MS per request (an
   LLM answer is hundreds of milliseconds to minutes): the request rate is then what 64 or
   256 streams of such requests make, the proxies are not saturated, and the added latency
   is their path's own, not queueing for a CPU the closed loop above keeps busy.
3. Least outstanding vs round robin: two fake workers, one 20x slower (5 ms and 100 ms), at
   concurrency 8; p50, p95 and requests per second. Round robin is the same gateway with its
   pick replaced (``--serve-round-robin``, a bench-only entry point), not a product option.
4. Routing cost: the gateway's CPU per request with ``routing.mode`` least_outstanding and
   prefix_affinity (gateway/routing.py), two processes in front of the same fake backend (a
   pool of ROUTING_WORKERS workers, all that one fake), taking turns; the requests are chat
   completions of ROUTING_SESSIONS sessions, each a shared system prompt and a growing
   conversation (about 3 KiB of JSON), the same bodies for both. The goal (issue #27): the
   rise at most ROUTING_GOAL_US. Then ``Affinity.pick()`` and ``request_key()`` alone, in
   microseconds per call (``--routing-only`` runs this section alone).

The figures are for comparing the rows of one run on one machine; the load generator shares
the CPUs with what it measures. Nothing is asserted about them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
GATEWAY = Path(PYTHON).with_name("vllm-gateway")
BODY = json.dumps({"model": "bench", "prompt": "hello", "max_tokens": 1}).encode()
CONCURRENCY = (1, 64, 256)
GOAL_P50_ADDED_MS = 1.0  # at concurrency 64
FAST_MS, SLOW_MS, BALANCE_CONCURRENCY = 5, 100, 8  # the two unequal workers
SLICES = 4  # each measurement is taken in this many interleaved turns
PACED_MS, PACED_CONCURRENCY = 200, (64, 256)  # section 2
NO_LOG = "gateway no-log"  # the same with --log-level warning: no per-request access log
ROUTING_WORKERS, ROUTING_SESSIONS, ROUTING_CONCURRENCY = 4, 64, 64  # section 4
ROUTING_GOAL_US = 20.0  # issue #27: prefix_affinity's CPU per request rises at most this
ROUTING_MODES = ("least_outstanding", "prefix_affinity")


@dataclass
class Measure:
    target: str
    concurrency: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    # CPU (user + system) the proxy process spent per request; for "direct", the fake's own.
    # Steadier than latency on a shared machine: it does not count time spent waiting.
    cpu_us_per_request: float | None = None


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening after {timeout_s} s")


@contextmanager
def process(args: list[str], port: int, log: Path) -> Iterator[subprocess.Popen[Any]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def fake_worker(port: int, delay_ms: float, tmp: Path) -> Any:
    return process([PYTHON, "-m", "gateway.testing.fakes", "--port", str(port),
                    "--delay-ms", str(delay_ms)], port, tmp / f"fake-{port}.log")


def gateway(workers: list[int], capacity: int, tmp: Path, round_robin: bool = False,
            log_level: str = "info", routing: dict[str, Any] | None = None) -> Any:
    api, metrics = free_port(), free_port()
    cfg = {
        "api": {"host": "127.0.0.1", "port": api},
        "metrics": {"host": "127.0.0.1", "port": metrics},
        "pools": [{"model": "bench", "queue_size": 10000, "routing": routing or {},
                   "workers": [
            {"name": f"w{i}", "url": f"http://127.0.0.1:{port}", "capacity": capacity}
            for i, port in enumerate(workers)]}],
        "health": {"interval_s": 5, "timeout_s": 1, "rise": 1, "fall": 3},
    }
    path = tmp / f"gateway-{api}.yml"
    path.write_text(yaml.safe_dump(cfg))
    args = ([PYTHON, __file__, "--serve-round-robin", str(path)] if round_robin
            else [str(GATEWAY), "--config", str(path), "--log-level", log_level])
    return api, process(args, api, tmp / f"gateway-{api}.log")


def haproxy(backend: int, tmp: Path) -> Any:
    port = free_port()
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(f"""global
    nbthread 1
    maxconn 4000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout queue 30s
    option http-keep-alive
frontend bench
    bind 127.0.0.1:{port}
    default_backend workers
backend workers
    balance leastconn
    server w0 127.0.0.1:{backend} maxconn 1024
""")
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    return port, process([binary, "-f", str(cfg), "-db"], port, tmp / "haproxy.log")


@dataclass
class Samples:
    """One target's latencies at one concurrency, gathered over interleaved slices."""

    latencies: list[float]
    errors: int = 0
    elapsed_s: float = 0.0
    cpu_s: float = 0.0

    def measure(self, target: str, concurrency: int, with_cpu: bool) -> Measure:
        n = len(self.latencies)
        q = statistics.quantiles(self.latencies, n=100, method="inclusive")
        return Measure(target, concurrency, n, self.errors, n / self.elapsed_s, q[49] * 1000,
                       q[94] * 1000, q[98] * 1000, self.cpu_s / n * 1e6 if with_cpu else None)


async def load(port: int, concurrency: int, seconds: float, pid: int | None,
               into: Samples, bodies: tuple[bytes, ...] = (BODY,),
               path: str = "/v1/completions") -> None:
    """A closed loop of ``concurrency`` clients for ``seconds`` (after a short warm-up); each
    client sends ``bodies`` in turn, starting at its own offset."""
    url = f"http://127.0.0.1:{port}{path}"
    headers = {"Content-Type": "application/json"}
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(until: float, record: bool, offset: int = 0) -> None:
            turn = offset
            while loop.time() < until:
                body = bodies[turn % len(bodies)]
                turn += 1
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                except aiohttp.ClientError:
                    ok = False
                if record:
                    into.latencies.append(time.perf_counter() - started)
                    into.errors += not ok

        warm = loop.time() + min(0.2, seconds / 4)
        await asyncio.gather(*(one(warm, False) for _ in range(concurrency)))
        began = time.perf_counter()
        cpu_before = cpu_seconds(pid) if pid else 0.0
        until = loop.time() + seconds
        await asyncio.gather(*(one(until, True, i * 7) for i in range(concurrency)))
        into.elapsed_s += time.perf_counter() - began
        into.cpu_s += cpu_seconds(pid) - cpu_before if pid else 0.0


def interleaved(targets: list[tuple[str, int, int]], concurrency: int,
                seconds: float, bodies: tuple[bytes, ...] = (BODY,),
                path: str = "/v1/completions") -> list[Measure]:
    """Each target gets ``seconds`` in all, in SLICES turns taken in rotation, so a change in
    the machine's load during the run falls on every target alike."""
    samples = {name: Samples([]) for name, _, _ in targets}
    for _ in range(SLICES):
        for name, port, pid in targets:
            asyncio.run(load(port, concurrency, seconds / SLICES, pid, samples[name], bodies,
                             path))
    return [samples[name].measure(name, concurrency, True) for name, _, _ in targets]


def added_latency(seconds: float, tmp: Path, delay_ms: float = 0,
                  concurrencies: tuple[int, ...] = CONCURRENCY,
                  ) -> tuple[list[Measure], str | None]:
    rows: list[Measure] = []
    backend = free_port()
    have_haproxy = shutil.which("haproxy") or Path("/usr/sbin/haproxy").exists()
    note = None if have_haproxy else "haproxy: no binary (apt-get install -y haproxy); skipped"
    with fake_worker(backend, delay_ms, tmp) as fake:
        api, gw = gateway([backend], 1024, tmp)
        quiet_api, quiet = gateway([backend], 1024, tmp, log_level="warning")
        with gw as gw_proc, quiet as quiet_proc:
            targets = [("direct", backend, fake.pid), ("vllm-gateway", api, gw_proc.pid),
                       (NO_LOG, quiet_api, quiet_proc.pid)]
            if have_haproxy:
                hport, hp = haproxy(backend, tmp)
                with hp as hp_proc:
                    targets.append(("haproxy", hport, hp_proc.pid))
                    rows = run_targets(targets, seconds, concurrencies)
            else:
                rows = run_targets(targets, seconds, concurrencies)
    return rows, note


def run_targets(targets: list[tuple[str, int, int]], seconds: float,
                concurrencies: tuple[int, ...]) -> list[Measure]:
    return [m for c in concurrencies for m in interleaved(targets, c, seconds)]


def balance(seconds: float, tmp: Path) -> list[Measure]:
    fast, slow = free_port(), free_port()
    with fake_worker(fast, FAST_MS, tmp), fake_worker(slow, SLOW_MS, tmp):
        lor_api, lor = gateway([fast, slow], 64, tmp)
        rr_api, rr = gateway([fast, slow], 64, tmp, round_robin=True)
        with lor as lor_proc, rr as rr_proc:
            rows = interleaved([("least outstanding", lor_api, lor_proc.pid),
                                ("round robin", rr_api, rr_proc.pid)],
                               BALANCE_CONCURRENCY, seconds)
    return rows


def chat_bodies() -> tuple[bytes, ...]:
    """ROUTING_SESSIONS conversations of 1 to 6 turns behind one shared system prompt."""
    system = "You are the fleet's assistant. Answer briefly and cite the runbook. " * 15
    bodies = []
    for session in range(ROUTING_SESSIONS):
        messages = [{"role": "system", "content": system}]
        for turn in range(6):
            messages.append({"role": "user", "content": f"Session {session}, question {turn}: "
                             "why did the canary mark the worker down? " * 4})
            bodies.append(json.dumps({"model": "bench", "messages": messages,
                                      "max_tokens": 1}).encode())
            messages = [*messages, {"role": "assistant", "content": "Because it stalled. " * 8}]
    return tuple(bodies)


def routing_settings(mode: str) -> dict[str, Any]:
    # Skip the shared system prompt ("system" + separators + its text), as an operator would.
    skip = len("system") + 2 + len(json.loads(chat_bodies()[0])["messages"][0]["content"])
    return {"mode": mode, "prefix_skip_chars": skip, "session_header": "X-Session-Id"}


def routing_cost(seconds: float, tmp: Path) -> list[Measure]:
    """CPU per request of the same gateway in each routing mode, on the same chat bodies."""
    backend = free_port()
    bodies = chat_bodies()
    with fake_worker(backend, 0, tmp):
        lo_api, lo = gateway([backend] * ROUTING_WORKERS, 1024, tmp,
                             routing=routing_settings(ROUTING_MODES[0]))
        pa_api, pa = gateway([backend] * ROUTING_WORKERS, 1024, tmp,
                             routing=routing_settings(ROUTING_MODES[1]))
        with lo as lo_proc, pa as pa_proc:
            return interleaved([(ROUTING_MODES[0], lo_api, lo_proc.pid),
                                (ROUTING_MODES[1], pa_api, pa_proc.pid)],
                               ROUTING_CONCURRENCY, seconds, bodies, "/v1/chat/completions")


def pick_micro(calls: int = 20000) -> list[dict[str, Any]]:
    """Affinity.pick() (blake2b of the key, the ring, the bound) and
    request_key() (a chat body already parsed) alone, in microseconds per call."""
    from gateway.config import WorkerConfig
    from gateway.pool import Worker
    from gateway.routing import CHAT_PATH, Affinity, RoutingConfig, request_key

    config = RoutingConfig(**routing_settings("prefix_affinity"))
    parsed = [json.loads(b) for b in chat_bodies()]
    keys = [k for k in (request_key(config, {}, CHAT_PATH, b) for b in parsed) if k]
    rows = []
    for n in (4, 8, 64):
        names = [f"gpu{i}/main" for i in range(n)]
        workers = [Worker(WorkerConfig(name, "http://127.0.0.1:1", 64), "bench")
                   for name in names]
        for i, w in enumerate(workers):
            w.healthy, w.in_flight = True, i % 5
        affinity = Affinity(config, names)
        started = time.perf_counter()
        for i in range(calls):
            affinity.pick(keys[i % len(keys)], workers)
        rows.append({"what": f"pick(), {n} workers", "us_per_call":
                     (time.perf_counter() - started) / calls * 1e6})
    started = time.perf_counter()
    for i in range(calls):
        request_key(config, {}, CHAT_PATH, parsed[i % len(parsed)])
    rows.append({"what": "request_key(), chat body", "us_per_call":
                 (time.perf_counter() - started) / calls * 1e6})
    return rows


def routing_report(measures: list[Measure], micro: list[dict[str, Any]]) -> dict[str, Any]:
    by = {m.target: m for m in measures}
    lo, pa = by[ROUTING_MODES[0]], by[ROUTING_MODES[1]]
    assert lo.cpu_us_per_request is not None and pa.cpu_us_per_request is not None
    rise = pa.cpu_us_per_request - lo.cpu_us_per_request
    return {"measures": [asdict(m) for m in measures], "rise_cpu_us": rise,
            "goal_us": ROUTING_GOAL_US, "met": rise <= ROUTING_GOAL_US, "micro": micro}


def routing_table(routing: dict[str, Any]) -> list[str]:
    lines = [f"Routing cost: {ROUTING_WORKERS} workers (one fake), {ROUTING_SESSIONS} chat "
             f"sessions, concurrency {ROUTING_CONCURRENCY}, the two modes taking turns",
             f"{'mode':<20}{'rps':>9}{'p50 ms':>9}{'p99 ms':>9}{'cpu us/req':>11}{'errors':>7}"]
    for m in routing["measures"]:
        lines.append(f"{m['target']:<20}{m['rps']:>9.0f}{m['p50_ms']:>9.2f}{m['p99_ms']:>9.2f}"
                     f"{m['cpu_us_per_request']:>11.0f}{m['errors']:>7}")
    lines.append(f"goal: prefix_affinity's CPU per request rises <= {routing['goal_us']:g} us: "
                 f"{routing['rise_cpu_us']:+.1f} us, {'met' if routing['met'] else 'NOT met'}")
    lines += [f"{r['what']:<28}{r['us_per_call']:>8.2f} us per call" for r in routing["micro"]]
    return lines


def serve_round_robin(config: str) -> int:
    """The gateway with round robin in place of least outstanding (this benchmark only)."""
    from gateway import cli
    from gateway.pool import Pool, Worker

    def pick(self: Pool, key: str | None = None) -> Worker | None:
        n = len(self.workers)
        for i in range(n):
            worker = self.workers[(self._next + i) % n]
            if worker.free:
                self._next = (self._next + i + 1) % n
                worker.in_flight += 1
                return worker
        return None

    Pool._pick = pick  # type: ignore[method-assign]
    return cli.main(["--config", config])


def added_rows(rows: list[Measure], concurrencies: tuple[int, ...]) -> list[dict[str, Any]]:
    by = {(m.target, m.concurrency): m for m in rows}
    added: list[dict[str, Any]] = []
    for c in concurrencies:
        direct = by[("direct", c)]
        for target in ("vllm-gateway", NO_LOG, "haproxy"):
            m = by.get((target, c))
            if m is None:
                continue
            added.append({"target": target, "concurrency": c,
                          "added_p50_ms": m.p50_ms - direct.p50_ms,
                          "added_p99_ms": m.p99_ms - direct.p99_ms, "rps": m.rps,
                          "direct_rps": direct.rps, "errors": m.errors})
    return added


def report(rows: list[Measure], paced: list[Measure], lor: list[Measure],
           note: str | None, routing: dict[str, Any]) -> dict[str, Any]:
    by = {(m.target, m.concurrency): m for m in rows}
    added = added_rows(rows, CONCURRENCY)
    paced_added = added_rows(paced, PACED_CONCURRENCY)
    ratios = {}
    for c in CONCURRENCY:
        g, h = by.get(("vllm-gateway", c)), by.get(("haproxy", c))
        d = by[("direct", c)]
        if g and h and h.p50_ms - d.p50_ms > 0:
            ratios[str(c)] = (g.p50_ms - d.p50_ms) / (h.p50_ms - d.p50_ms)
    g64 = next(a for a in added if a["target"] == "vllm-gateway" and a["concurrency"] == 64)
    p64 = next(a for a in paced_added if a["target"] == "vllm-gateway" and a["concurrency"] == 64)
    return {
        "measures": [asdict(m) for m in rows],
        "added": added,
        "paced": {"backend_ms": PACED_MS, "measures": [asdict(m) for m in paced],
                  "added": paced_added},
        "gateway_to_haproxy_added_p50_ratio": ratios,
        "balance": [asdict(m) for m in lor],
        "routing": routing,
        "goal": {"p50_added_ms_at_64": GOAL_P50_ADDED_MS,
                 "measured_ms": g64["added_p50_ms"],
                 "met": g64["added_p50_ms"] <= GOAL_P50_ADDED_MS,
                 "paced_measured_ms": p64["added_p50_ms"],
                 "paced_met": p64["added_p50_ms"] <= GOAL_P50_ADDED_MS},
        "notes": [note] if note else [],
        "cpus": os.cpu_count(),
    }


def latency_rows(measures: list[dict[str, Any]], added: list[dict[str, Any]]) -> list[str]:
    """A table of the measures, each with its added p50 and p99 against direct."""
    lines = [f"{'target':<14}{'conc':>5}{'rps':>9}{'p50 ms':>9}{'p99 ms':>9}"
             f"{'+p50 ms':>9}{'+p99 ms':>9}{'cpu us/req':>11}{'errors':>7}"]
    by = {(a["target"], a["concurrency"]): a for a in added}
    for m in measures:
        a = by.get((m["target"], m["concurrency"]))
        plus = (f"{a['added_p50_ms']:>9.2f}{a['added_p99_ms']:>9.2f}" if a
                else f"{'-':>9}{'-':>9}")
        cpu = m["cpu_us_per_request"]
        lines.append(f"{m['target']:<14}{m['concurrency']:>5}{m['rps']:>9.0f}"
                     f"{m['p50_ms']:>9.2f}{m['p99_ms']:>9.2f}{plus}"
                     f"{cpu if cpu is None else round(cpu):>11}{m['errors']:>7}")
    return lines


def table(result: dict[str, Any]) -> str:
    lines = ["Added latency (vs direct to the fake backend), 127.0.0.1, closed loop",
             *latency_rows(result["measures"], result["added"])]
    for c, r in result["gateway_to_haproxy_added_p50_ratio"].items():
        lines.append(f"gateway / haproxy added p50 at concurrency {c}: {r:.1f}x")
    lines.append("cpu us/req: the proxy process's own CPU per request (direct: the fake's)")
    lines.extend(result["notes"])
    goal = result["goal"]
    lines.append(f"goal: added p50 <= {goal['p50_added_ms_at_64']} ms at concurrency 64: "
                 f"{goal['measured_ms']:.2f} ms, {'met' if goal['met'] else 'NOT met'}")
    paced = result["paced"]
    lines += ["", f"The same against a backend answering in {paced['backend_ms']} ms (LLM-like: "
              "the proxies not saturated)", *latency_rows(paced["measures"], paced["added"])]
    lines.append(f"goal, paced: {goal['paced_measured_ms']:.2f} ms at concurrency 64, "
                 f"{'met' if goal['paced_met'] else 'NOT met'}")
    lines += ["", f"Two fake workers, {FAST_MS} ms and {SLOW_MS} ms, concurrency "
              f"{BALANCE_CONCURRENCY}, through vllm-gateway",
              f"{'policy':<20}{'rps':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>7}"]
    for m in result["balance"]:
        lines.append(f"{m['target']:<20}{m['rps']:>9.0f}{m['p50_ms']:>9.2f}"
                     f"{m['p95_ms']:>9.2f}{m['p99_ms']:>9.2f}{m['errors']:>7}")
    return "\n".join([*lines, "", *routing_table(result["routing"])])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=3.0, help="per measurement (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON (the table to stderr)")
    p.add_argument("--routing-only", action="store_true",
                   help="only section 4: the CPU cost of prefix_affinity, and pick() alone")
    p.add_argument("--serve-round-robin", metavar="CONFIG", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_round_robin:
        return serve_round_robin(args.serve_round_robin)
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        # Twice the time of the other sections: the rise sought is ~1 % of the CPU measured.
        routing = routing_report(routing_cost(2 * args.seconds, Path(tmp)), pick_micro())
        if args.routing_only:
            print(json.dumps(routing, indent=2) if args.json else "\n".join(
                routing_table(routing)))
            return 0
        rows, note = added_latency(args.seconds, Path(tmp))
        paced, _ = added_latency(args.seconds, Path(tmp), PACED_MS, PACED_CONCURRENCY)
        lor = balance(args.seconds, Path(tmp))
    result = report(rows, paced, lor, note, routing)
    if args.json:
        print(table(result), file=sys.stderr)
        print(json.dumps(result, indent=2))
    else:
        print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
