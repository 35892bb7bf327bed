"""Fake servers: a fake vLLM, a fake Prometheus, a fake Grafana (http.server in threads).

The fake vLLM behaves like vLLM 0.32 where the post-check looks: its counters really grow per
completion (and http_requests_total{status="4xx"} per invalid request), its gauges go up while
requests are in flight or queued (capacity plays --max-num-seqs), /metrics uses vLLM's names
and serves every family of the pinned release's list (templates/vllm-metrics/), /version
answers. The request handling lives in VLLMState so that other transports (aiofleet.py, the
benchmark's many-workers-per-process servers) share it.

The fake Prometheus answers the post-check's query shapes from its targets' live state:
in-process FakeVLLMs (tests, no scrape lag) or workers in other processes read over HTTP
(`GET /fake/state`), cached for one scrape interval like a real scrape.
"""

from __future__ import annotations

import base64
import functools
import http.client
import json
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from postcheck import paths
from postcheck.testing.prefix_cache import FAMILIES as PREFIX_CACHE_FAMILIES
from postcheck.testing.prefix_cache import FakePrefixCache, prompt_tokens
from postcheck.vllm_metrics import Family, load_families, pinned_version

# vLLM 0.32's request-time buckets (e2e latency, queue time, prefill, decode, inference).
LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
    float("inf"),
)
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
HISTOGRAMS = ("vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds")
# Families the state model moves; every other listed family is served with constant values.
DYNAMIC = frozenset(
    {
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:request_success_total",
        "vllm:admission_rejections_total",
        "http_requests_total",
        *HISTOGRAMS,
        *PREFIX_CACHE_FAMILIES,
    }
)
# What a node_exporter serves where the host dashboards look (constant values: rate() of
# them is 0, which is data). FakeVLLM(metrics="node") serves it: someone else's /metrics.
NODE_EXPORTER_TEXT = """\
# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.
# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{cpu="0",mode="idle"} 1234.5
node_cpu_seconds_total{cpu="0",mode="iowait"} 3.25
node_cpu_seconds_total{cpu="0",mode="user"} 120.5
# TYPE node_memory_MemTotal_bytes gauge
node_memory_MemTotal_bytes 8.3e+09
# TYPE node_memory_MemAvailable_bytes gauge
node_memory_MemAvailable_bytes 5.1e+09
# TYPE node_filesystem_avail_bytes gauge
node_filesystem_avail_bytes{device="/dev/sda1",fstype="ext4",mountpoint="/"} 2e+10
# TYPE node_filesystem_size_bytes gauge
node_filesystem_size_bytes{device="/dev/sda1",fstype="ext4",mountpoint="/"} 5e+10
# TYPE node_disk_read_bytes_total counter
node_disk_read_bytes_total{device="sda"} 1e+08
# TYPE node_disk_written_bytes_total counter
node_disk_written_bytes_total{device="sda"} 2e+08
# TYPE node_network_receive_bytes_total counter
node_network_receive_bytes_total{device="eth0"} 1e+07
# TYPE node_network_transmit_bytes_total counter
node_network_transmit_bytes_total{device="eth0"} 2e+07
# TYPE go_goroutines gauge
go_goroutines 8
"""
NODE_EXPORTER_NAMES = frozenset(
    line.split("{")[0].split(" ")[0]
    for line in NODE_EXPORTER_TEXT.splitlines()
    if line and not line.startswith("#")
)
# vLLM does not count these in http_requests_total.
UNCOUNTED_PATHS = frozenset({"/health", "/metrics", "/load", "/ping", "/version"})

Series = tuple[str, dict[str, str], float]


@functools.cache
def reference_version() -> str:
    """The release the fakes imitate: the pinned one."""
    return pinned_version(paths.VLLM_ROLE_DEFAULTS)


@functools.cache
def reference_families(version: str | None = None) -> dict[str, Family]:
    return load_families(paths.VLLM_METRICS, version or reference_version())


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else str(bound)


def _label_text(labels: Mapping[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{{{inner}}}" if inner else ""


@functools.cache
def filler(
    model: str, drop: frozenset[str], version: str | None = None
) -> tuple[str, frozenset[str]]:
    """(/metrics text, sample names) of every listed family the state model does not move."""
    lines: list[str] = []
    names: set[str] = set()
    for fam in reference_families(version).values():
        if fam.name in DYNAMIC or fam.name in drop:
            continue
        lines.append(f"# HELP {fam.name} {fam.name} (constant in the fake).")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        fixed = {k: model if k == "model_name" else "0" for k in fam.labels if k != "le"}
        vary = next((k for k in reversed(fam.labels) if k not in ("engine", "model_name")), None)
        if fam.type == "histogram":
            per_set = max(3, fam.samples)
            buckets = [2.0**i for i in range(per_set - 3)] + [float("inf")]
            for le in buckets:
                lines.append(f"{fam.name}_bucket{_label_text({**fixed, 'le': _le(le)})} 0.0")
            lines.append(f"{fam.name}_count{_label_text(fixed)} 0.0")
            lines.append(f"{fam.name}_sum{_label_text(fixed)} 0.0")
            names |= {f"{fam.name}_bucket", f"{fam.name}_count", f"{fam.name}_sum"}
            continue
        sets = fam.samples // 2 if fam.type == "summary" else fam.samples
        for i in range(max(1, sets)):
            labels = {**fixed, vary: str(i)} if vary else fixed
            if fam.type == "summary":
                lines.append(f"{fam.name}_count{_label_text(labels)} 0.0")
                lines.append(f"{fam.name}_sum{_label_text(labels)} 0.0")
                names |= {f"{fam.name}_count", f"{fam.name}_sum"}
            else:
                value = 0.0 if fam.type == "counter" else 1.0
                lines.append(f"{fam.name}{_label_text(labels)} {value}")
                names.add(fam.name)
            if not vary:
                break
    return "\n".join(lines) + "\n", frozenset(names)


@dataclass
class Reply:
    code: int
    body: str
    ctype: str = "application/json"


@dataclass
class Completion:
    """A completion the transport must run: enqueue, wait for a slot, begin, sleep, finish."""

    payload: Mapping[str, Any]
    arrived: float = 0.0
    started: float = 0.0
    hang: bool = False  # the worker stopped answering: never finish it

    def tokens(self) -> int:
        return int(self.payload.get("max_tokens") or 1)


# A 256-slot GPU instance as the production fakes play it (H100/H200, an 8B model, full
# batch): about 30 tokens/s per sequence (33 ms between tokens) after a 50 ms prefill.
PRODUCTION_SLOTS = 256
PRODUCTION_TTFT_S = 0.05
PRODUCTION_PER_TOKEN_S = 0.033


class VLLMState:
    """One fake vLLM's state and request handling, whatever serves its HTTP."""

    def __init__(
        self,
        model: str = "tiny",
        capacity: int = 2,
        *,
        api_key: str | None = None,
        metrics: str = "vllm",
        version: str | None = None,
        drop: Iterable[str] = (),
        record_bodies: bool = True,
        per_token_s: float = 0.0,
        hang_after: int | None = None,
    ) -> None:
        self.model = model
        self.capacity = capacity
        # A completion runs the transport's delay (prefill) + max_tokens x per_token_s.
        self.per_token_s = per_token_s
        # After this many completions the worker stops answering completions (hung engine).
        self.hang_after = hang_after
        self.completions_routed = 0
        self.api_key = api_key
        self.metrics_mode = metrics  # "vllm" | "node" (someone else's /metrics)
        self.version = version or reference_version()  # what /version says
        self.drop = frozenset(drop)  # families this "release" does not serve
        self.record_bodies = record_bodies
        self.cond = threading.Condition()  # re-entrant: methods lock, transports may too
        self.running = 0
        self.waiting = 0
        self.peak = {"vllm:num_requests_running": 0.0, "vllm:num_requests_waiting": 0.0}
        self.success = dict.fromkeys(FINISH_REASONS, 0)
        self.completion_bodies: list[dict[str, Any]] = []
        self.rejections = {"max_num_queued_reqs": 0, "max_num_queued_tokens": 0}
        self.hist: dict[str, list[float]] = {}  # name -> [count, sum, *bucket counts]
        self.http: dict[tuple[str, str, str], int] = {}
        self.prefix_cache = FakePrefixCache()
        config = reference_families().get("vllm:cache_config_info")
        self.cache_config_labels = config.labels if config else ()

    # --- state --------------------------------------------------------------------------
    def _observe(self, name: str, value: float) -> None:
        h = self.hist.setdefault(name, [0.0, 0.0] + [0.0] * len(LATENCY_BUCKETS))
        h[0] += 1
        h[1] += value
        for i, le in enumerate(LATENCY_BUCKETS):
            if value <= le:
                h[2 + i] += 1

    def serve_other(self, error: bool = False) -> None:
        """Someone else's request, finished (live traffic beside the post-check): counted by
        every counter a real one moves, an error one as vLLM counts a failed request."""
        with self.cond:
            self.success["error" if error else "stop"] += 1
            self._observe("vllm:e2e_request_latency_seconds", 0.4)
            self._observe("vllm:request_queue_time_seconds", 0.0)
            self.count_http("/v1/chat/completions", "POST", 500 if error else 200)

    def duration(self, job: Completion, delay: float) -> float:
        return delay + job.tokens() * self.per_token_s

    def count_http(self, handler: str, method: str, code: int) -> None:
        if handler in UNCOUNTED_PATHS:
            return
        with self.cond:
            key = (handler, method, f"{code // 100}xx")
            self.http[key] = self.http.get(key, 0) + 1

    def series(self) -> list[Series]:
        """The series the state model moves (not the constant families)."""
        with self.cond:
            base = {"engine": "0", "model_name": self.model}
            out: list[Series] = [
                ("vllm:num_requests_running", dict(base), float(self.running)),
                ("vllm:num_requests_waiting", dict(base), float(self.waiting)),
                ("vllm:kv_cache_usage_perc", dict(base), 0.5 * self.running / self.capacity),
            ]
            for reason, n in self.success.items():
                out.append(
                    ("vllm:request_success_total", {**base, "finished_reason": reason}, float(n))
                )
            for reason, n in self.rejections.items():
                labels = {"model_name": self.model, "reason": reason}
                out.append(("vllm:admission_rejections_total", labels, float(n)))
            for name in HISTOGRAMS:
                h = self.hist.get(name, [0.0, 0.0] + [0.0] * len(LATENCY_BUCKETS))
                for i, le in enumerate(LATENCY_BUCKETS):
                    out.append((f"{name}_bucket", {**base, "le": _le(le)}, h[2 + i]))
                out.append((f"{name}_count", dict(base), h[0]))
                out.append((f"{name}_sum", dict(base), h[1]))
            for (handler, method, status), n in self.http.items():
                labels = {"handler": handler, "method": method, "status": status}
                out.append(("http_requests_total", labels, float(n)))
            out += self.prefix_cache.series(self.model, self.cache_config_labels)
        return [s for s in out if _family(s[0]) not in self.drop]

    def sample_names(self) -> frozenset[str]:
        """Every sample name /metrics serves (moved and constant)."""
        if self.metrics_mode != "vllm":
            return NODE_EXPORTER_NAMES
        return frozenset(s[0] for s in self.series()) | filler(self.model, self.drop)[1]

    def sum(self, name: str, labels: Mapping[str, str]) -> float | None:
        found = [
            v
            for n, lab, v in self.series()
            if n == name and all(lab.get(k) == x for k, x in labels.items())
        ]
        return sum(found) if found else None

    def exposition(self) -> str:
        if self.metrics_mode == "node":
            return NODE_EXPORTER_TEXT
        families = reference_families()
        lines: list[str] = []
        last = ""
        for name, labels, value in self.series():
            fam = _family(name)
            if fam != last:
                kind = families[fam].type if fam in families else "untyped"
                lines.append(f"# HELP {fam} {fam} (moved by the fake's requests).")
                lines.append(f"# TYPE {fam} {kind}")
                last = fam
            lines.append(f"{name}{_label_text(labels)} {value}")
        return "\n".join(lines) + "\n" + filler(self.model, self.drop)[0]

    def snapshot_json(self) -> str:
        """What GET /fake/state answers: the moved series, gauge peaks, what it serves."""
        with self.cond:
            return json.dumps(
                {
                    "series": self.series(),
                    "peaks": self.peak,
                    "model": self.model,
                    "drop": sorted(self.drop),
                    "mode": self.metrics_mode,
                }
            )

    # --- completions (the transport waits between these) -------------------------------
    def enqueue(self, job: Completion) -> None:
        with self.cond:
            job.arrived = time.monotonic()
            self.waiting += 1
            self.peak["vllm:num_requests_waiting"] = max(
                self.peak["vllm:num_requests_waiting"], self.waiting
            )

    def has_slot(self) -> bool:
        return self.running < self.capacity

    def begin(self, job: Completion) -> None:
        with self.cond:
            job.started = time.monotonic()
            self.waiting -= 1
            self.running += 1
            self.peak["vllm:num_requests_running"] = max(
                self.peak["vllm:num_requests_running"], self.running
            )
            self.prefix_cache.schedule(prompt_tokens(job.payload.get("prompt")))

    def finish(self, job: Completion) -> Reply:
        with self.cond:
            self.running -= 1
            self.prefix_cache.finish(prompt_tokens(job.payload.get("prompt")))
            self.success["length"] += 1
            self._observe("vllm:e2e_request_latency_seconds", time.monotonic() - job.arrived)
            self._observe("vllm:request_queue_time_seconds", job.started - job.arrived)
            self.count_http("/v1/completions", "POST", 200)
        n = int(job.payload.get("max_tokens") or 1)
        answer = {
            "object": "text_completion",
            "model": self.model,
            "choices": [{"index": 0, "text": " hi" * n, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": n, "total_tokens": n + 2},
        }
        return Reply(200, json.dumps(answer))

    # --- routing --------------------------------------------------------------------------
    def route(
        self, method: str, path: str, authorization: str | None, body: bytes | None
    ) -> Reply | Completion:
        if path == "/health":
            return Reply(200, "", "text/plain")
        if path == "/metrics":
            return Reply(200, self.exposition(), "text/plain; version=0.0.4; charset=utf-8")
        if path == "/version":
            return Reply(200, json.dumps({"version": self.version}))
        if path == "/fake/state":
            return Reply(200, self.snapshot_json())
        if self.api_key and authorization != f"Bearer {self.api_key}":
            self.count_http(path, method, 401)
            return Reply(401, json.dumps({"error": "Unauthorized"}))
        if path == "/v1/models" and method == "GET":
            self.count_http(path, method, 200)
            return Reply(200, json.dumps({"object": "list", "data": [{"id": self.model}]}))
        if path == "/v1/completions" and method == "POST":
            payload = json.loads(body or b"{}")
            if self.record_bodies:
                with self.cond:
                    self.completion_bodies.append(payload)
            if payload.get("model") != self.model:
                self.count_http(path, method, 404)
                err = {
                    "message": f"The model `{payload.get('model')}` does not exist.",
                    "type": "NotFoundError",
                    "param": "model",
                    "code": 404,
                }
                return Reply(404, json.dumps({"error": err}))
            with self.cond:
                self.completions_routed += 1
                hang = self.hang_after is not None and self.completions_routed > self.hang_after
            return Completion(payload, hang=hang)
        self.count_http(path, method, 404)
        return Reply(404, json.dumps({"detail": "Not Found"}))


def _family(sample: str) -> str:
    for suffix in ("_bucket", "_count", "_sum"):
        if sample.endswith(suffix):
            return sample[: -len(suffix)]
    return sample


# --- threaded HTTP servers --------------------------------------------------------------
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512  # the post-check opens many connections at once


class _Base:
    def __init__(self) -> None:
        self._httpd: _Server | None = None
        self.port = 0

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else every answer waits for a delayed ACK

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner.handle(self, "GET", None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                owner.handle(self, "POST", self.rfile.read(length))

        return Handler

    def handle(self, req: BaseHTTPRequestHandler, method: str, body: bytes | None) -> None:
        raise NotImplementedError

    @staticmethod
    def reply(
        req: BaseHTTPRequestHandler, code: int, body: str, ctype: str = "application/json"
    ) -> None:
        data = body.encode()
        req.send_response(code)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def start(self) -> _Base:
        self._httpd = _Server(("127.0.0.1", self.port), self._handler())
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def alive(self) -> bool:
        return self._httpd is not None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.port}"


class FakeVLLM(_Base, VLLMState):
    """A fake vLLM server: VLLMState behind http.server threads (a thread per connection)."""

    def __init__(
        self,
        model: str = "tiny",
        capacity: int = 2,
        delay: float = 0.02,
        api_key: str | None = None,
        metrics: str = "vllm",
        version: str | None = None,
        drop: Iterable[str] = (),
        per_token_s: float = 0.0,
        hang_after: int | None = None,
    ) -> None:
        _Base.__init__(self)
        VLLMState.__init__(
            self,
            model,
            capacity,
            api_key=api_key,
            metrics=metrics,
            version=version,
            drop=drop,
            per_token_s=per_token_s,
            hang_after=hang_after,
        )
        self.delay = delay
        self._stopping = threading.Event()  # wakes hung requests and background traffic

    def background(self, every_s: float, error_every: int = 0) -> None:
        """Other clients' traffic until stop(): a finished request every `every_s` seconds,
        every `error_every`-th of them failed (0: none)."""

        def run() -> None:
            n = 0
            while not self._stopping.wait(every_s):
                n += 1
                self.serve_other(error=bool(error_every) and n % error_every == 0)

        threading.Thread(target=run, daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        super().stop()

    def handle(self, req: BaseHTTPRequestHandler, method: str, body: bytes | None) -> None:
        path = urlsplit(req.path).path
        result = self.route(method, path, req.headers.get("Authorization"), body)
        if isinstance(result, Completion):
            with self.cond:
                self.enqueue(result)
                while not self.has_slot():
                    self.cond.wait()
                self.begin(result)
            if result.hang:
                self._stopping.wait()  # never answers while the server runs
                return
            time.sleep(self.duration(result, self.delay))
            with self.cond:
                result_reply = self.finish(result)
                self.cond.notify()
            result = result_reply
        self.reply(req, result.code, result.body, result.ctype)


# --- the fake Prometheus ----------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    series: Sequence[Series]
    peaks: Mapping[str, float]
    names: frozenset[str]  # every sample name the target serves


class Target(Protocol):
    @property
    def job(self) -> str: ...

    @property
    def instance(self) -> str: ...

    def snapshot(self) -> Snapshot | None:
        """The target's state as last scraped; None: the scrape failed (up == 0)."""
        ...


@dataclass
class LocalTarget:
    """An in-process FakeVLLM, read without delay."""

    vllm: FakeVLLM
    job: str = "vllm"

    @property
    def instance(self) -> str:
        return self.vllm.instance

    def snapshot(self) -> Snapshot | None:
        if not self.vllm.alive:
            return None
        return Snapshot(self.vllm.series(), dict(self.vllm.peak), self.vllm.sample_names())


@dataclass
class StaticTarget:
    """A node_exporter target: always up, serving NODE_EXPORTER_TEXT's names."""

    instance: str
    job: str = "node"

    def snapshot(self) -> Snapshot | None:
        return Snapshot((), {}, NODE_EXPORTER_NAMES)


class HttpStateTarget:
    """A worker in another process, read from its GET /fake/state at most once per
    `interval_s` (like a scrape: Prometheus lags the worker by up to one interval).

    With `delay_s`, Prometheus is late by that much, whatever the timing of the queries (a
    Prometheus just back from a reboot): it answers with the newest state read at least
    `delay_s` ago, or while none is that old yet, the one read when it was made (the worker
    idle: its caller starts the worker first)."""

    def __init__(
        self,
        instance: str,
        job: str = "vllm",
        interval_s: float = 1.0,
        timeout_s: float = 5.0,
        delay_s: float = 0.0,
    ) -> None:
        self.instance = instance
        self.job = job
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.delay_s = delay_s
        self._cached: Snapshot | None = None
        self._read_at = -1e9
        self._history: list[tuple[float, Snapshot | None]] = []
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        if delay_s > 0:
            self._history.append((time.monotonic(), self._fetch()))

    def _fetch(self) -> Snapshot | None:
        host, _, port = self.instance.rpartition(":")
        data: Any = None
        for _attempt in range(2):  # a kept-alive connection the server closed: reconnect once
            if self._conn is None:
                self._conn = http.client.HTTPConnection(host, int(port), timeout=self.timeout_s)
            try:
                self._conn.request("GET", "/fake/state")
                data = json.loads(self._conn.getresponse().read())
                break
            except (OSError, http.client.HTTPException, ValueError):
                self._conn.close()
                self._conn = None
        if not isinstance(data, dict):
            return None
        if data.get("mode") != "vllm":
            return Snapshot((), {}, NODE_EXPORTER_NAMES)
        series = [(str(n), dict(lab), float(v)) for n, lab, v in data["series"]]
        constant = filler(str(data["model"]), frozenset(data["drop"]))[1]
        return Snapshot(series, dict(data["peaks"]), frozenset(n for n, _, _ in series) | constant)

    def snapshot(self) -> Snapshot | None:
        with self._lock:
            now = time.monotonic()
            if now - self._read_at >= self.interval_s:
                self._cached = self._fetch()
                self._read_at = now
                if self.delay_s > 0:
                    self._history.append((now, self._cached))
            if self.delay_s <= 0:
                return self._cached
            old = [snap for at, snap in self._history if now - at >= self.delay_s]
            return old[-1] if old else self._history[0][1]


_AGG = re.compile(r"^(sum|count|max|min)\s*(?:by\s*\(\s*(\w+)\s*\)\s*)?\((.*)\)$", re.DOTALL)
_OVER_TIME = re.compile(r"^max_over_time\((.*)\[\d+s\]\)$", re.DOTALL)
_SELECTOR = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?$", re.DOTALL)
_MATCHER = re.compile(r'(\w+)\s*(=~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_NAME = re.compile(r"([a-zA-Z_:][\w:]*)\s*\{")

Row = tuple[dict[str, str], float]


def _matchers(text: str) -> dict[str, str] | None:
    """Equality matchers; None when a selector uses =~ or != (not answered exactly)."""
    found = _MATCHER.findall(text or "")
    if any(op != "=" for _, op, _ in found):
        return None
    return {k: v for k, _, v in found}


class FakePrometheus(_Base):
    """Answers the shapes of query the post-check sends, from its targets' live state.

    Exactly: `up{...}`, `SEL`, `sum|count|max|min [by (instance)] (SEL)` and
    `max [by (instance)] (max_over_time(SEL[Ns]))` where SEL is `name{label="value",...}`
    (max_over_time of a gauge is the worker's peak since it started). Anything else (the
    dashboards' panels): one series if every metric it names is served by some target.
    """

    def __init__(
        self,
        vllms: Iterable[FakeVLLM] = (),
        node_targets: Iterable[str] = (),
        job: str = "vllm",
        targets: Iterable[Target] = (),
        record_queries: bool = True,
    ) -> None:
        super().__init__()
        self.job = job
        self.targets: list[Target] = [LocalTarget(v, job) for v in vllms]
        self.targets += [StaticTarget(n) for n in node_targets]
        self.targets += list(targets)
        self.record_queries = record_queries
        self.queries: list[str] = []
        # What /api/v1/rules and /api/v1/alerts serve, in Prometheus's own shapes.
        self.rule_groups: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []

    def _select(self, name: str, labels: Mapping[str, str], over_time: bool) -> list[Row]:
        rows: list[Row] = []
        rest = {k: v for k, v in labels.items() if k not in ("job", "instance")}
        for t in self.targets:
            if labels.get("job", t.job) != t.job:
                continue
            if labels.get("instance", t.instance) != t.instance:
                continue
            snap = t.snapshot()
            target_labels = {"job": t.job, "instance": t.instance}
            if name == "up":
                if not rest:
                    rows.append((target_labels, 0.0 if snap is None else 1.0))
                continue
            if snap is None:
                continue
            for n, lab, v in snap.series:
                if n == name and rest.items() <= lab.items():
                    value = max(v, snap.peaks.get(name, v)) if over_time else v
                    rows.append(({"__name__": n, **lab, **target_labels}, value))
        return rows

    def evaluate(self, expr: str) -> list[Row]:
        text = expr.strip()
        agg = by = None
        over_time = False
        if m := _AGG.match(text):
            agg, by, text = m.group(1), m.group(2), m.group(3).strip()
            if ot := _OVER_TIME.match(text):
                over_time, text = True, ot.group(1).strip()
        sel = _SELECTOR.match(text)
        labels = _matchers(sel.group(2) or "") if sel else None
        if sel is None or labels is None or (over_time and agg != "max"):
            return self._generic(expr)
        rows = self._select(sel.group(1), labels, over_time)
        if agg is None:
            return [({k: v for k, v in lab.items() if k != "__name__"}, v) for lab, v in rows]
        groups: dict[str, list[float]] = {}
        for lab, v in rows:
            groups.setdefault(lab.get(by, "") if by else "", []).append(v)
        out: list[Row] = []
        for key, values in groups.items():
            value = {
                "sum": sum(values),
                "count": float(len(values)),
                "max": max(values),
                "min": min(values),
            }[agg]
            out.append(({by: key} if by else {}, value))
        return out

    def _generic(self, expr: str) -> list[Row]:
        """Dashboard panels: data if every metric the query names exists somewhere."""
        known = {"up", "ALERTS"}  # Prometheus's own; ALERTS: the Watchdog always fires
        for t in self.targets:
            snap = t.snapshot()
            if snap is not None:
                known |= snap.names
        names = set(_NAME.findall(expr)) - {"by", "without", "on", "ignoring"}
        return [({}, 1.0)] if names and names <= known else []

    def handle(self, req: BaseHTTPRequestHandler, method: str, body: bytes | None) -> None:
        parts = urlsplit(req.path)
        if parts.path == "/api/v1/status/buildinfo":
            return self.reply(
                req, 200, json.dumps({"status": "success", "data": {"version": "2.42.0"}})
            )
        # Its own Alertmanager: the fake serves Alertmanager's alerts API too, where the
        # Watchdog of the alertmanager check always fires.
        if parts.path == "/api/v1/status/config":
            yaml = f"alerting:\n  alertmanagers:\n  - static_configs: [{self.instance}]"
            return self.reply(req, 200, json.dumps({"status": "success", "data": {"yaml": yaml}}))
        if parts.path == "/api/v1/alertmanagers":
            managers = {"activeAlertmanagers": [{"url": f"{self.url}/api/v2/alerts"}],
                        "droppedAlertmanagers": []}
            return self.reply(req, 200, json.dumps({"status": "success", "data": managers}))
        if parts.path == "/api/v2/alerts":
            watchdog: dict[str, Any] = {
                "labels": {"alertname": "Watchdog", "severity": "none"},
                "status": {"state": "active", "inhibitedBy": [], "silencedBy": []},
            }
            return self.reply(req, 200, json.dumps([watchdog]))
        if parts.path in ("/api/v1/rules", "/api/v1/alerts"):
            data: dict[str, Any] = (
                {"groups": self.rule_groups}
                if parts.path.endswith("rules")
                else {"alerts": self.alerts}
            )
            return self.reply(req, 200, json.dumps({"status": "success", "data": data}))
        if parts.path == "/api/v1/query":
            form = parse_qs(parts.query)
            if body:
                form.update(parse_qs(body.decode()))
            expr = form.get("query", [""])[0]
            if self.record_queries:
                self.queries.append(expr)
            now = time.time()
            result = [{"metric": lab, "value": [now, repr(v)]} for lab, v in self.evaluate(expr)]
            data = {"resultType": "vector", "result": result}
            return self.reply(req, 200, json.dumps({"status": "success", "data": data}))
        return self.reply(req, 404, "404 page not found", "text/plain")


# --- the fake Grafana -------------------------------------------------------------------
class FakeGrafana(_Base):
    """Grafana's HTTP API where the post-check looks: /api/health (anonymous), datasource
    health and dashboards by uid (basic auth or a token). Dashboards default to every file
    of templates/dashboards."""

    def __init__(
        self,
        user: str = "admin",
        password: str = "grafana-secret-pw",
        dashboards: Mapping[str, Mapping[str, Any]] | None = None,
        datasources: Mapping[str, str] | None = None,
        database: str = "ok",
        token: str | None = None,
    ) -> None:
        super().__init__()
        self.user = user
        self.password = password
        self.token = token  # a service account token it accepts as "Bearer <token>"
        if dashboards is None:
            dashboards = {}
            for path in sorted(paths.DASHBOARDS.glob("*.json")):
                data = json.loads(path.read_text(encoding="utf-8"))
                dashboards[str(data["uid"])] = data
        self.dashboards = dict(dashboards)
        # datasource uid -> "OK" or an error message its health check reports
        self.datasources = dict(datasources if datasources is not None else {"prometheus": "OK"})
        self.database = database
        self.requests: list[tuple[str, str | None]] = []  # (path, Authorization header)

    def _authorized(self, header: str | None) -> bool:
        if self.token and header == f"Bearer {self.token}":
            return True
        want = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return header == f"Basic {want}"

    def handle(self, req: BaseHTTPRequestHandler, method: str, body: bytes | None) -> None:
        path = urlsplit(req.path).path
        auth = req.headers.get("Authorization")
        self.requests.append((path, auth))
        if path == "/api/health":
            info = {"commit": "fake", "database": self.database, "version": "11.3.0"}
            return self.reply(req, 200 if self.database == "ok" else 503, json.dumps(info))
        if not path.startswith("/api/"):
            return self.reply(req, 404, "Not found", "text/html")
        if not self._authorized(auth):
            msg = "invalid username or password" if auth else "Unauthorized"
            return self.reply(req, 401, json.dumps({"message": msg}))
        if m := re.fullmatch(r"/api/datasources/uid/([^/]+)/health", path):
            status = self.datasources.get(m.group(1))
            if status is None:
                return self.reply(req, 404, json.dumps({"message": "Data source not found"}))
            if status == "OK":
                ok = {"status": "OK", "message": "Successfully queried the Prometheus API."}
                return self.reply(req, 200, json.dumps(ok))
            return self.reply(req, 400, json.dumps({"status": "ERROR", "message": status}))
        if m := re.fullmatch(r"/api/dashboards/uid/([^/]+)", path):
            dash = self.dashboards.get(m.group(1))
            if dash is None:
                return self.reply(req, 404, json.dumps({"message": "Dashboard not found"}))
            meta = {"provisioned": True, "folderTitle": "General", "slug": m.group(1)}
            return self.reply(
                req, 200, json.dumps({"dashboard": {**dash, "version": 1}, "meta": meta})
            )
        return self.reply(req, 404, json.dumps({"message": "Not found"}))
