"""Fake servers for the unit tests: a fake vLLM and a fake Prometheus (http.server in threads).

The fake vLLM behaves like vLLM 0.32 where the post-check looks: its counters really grow per
completion (and http_requests_total{status="4xx"} per invalid request), its gauges go up while
requests are in flight or queued (capacity plays --max-num-seqs), /metrics uses vLLM's names.
The fake Prometheus answers the post-check's query shapes from the fake vLLMs' live state.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, float("inf"))
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")

Series = tuple[str, dict[str, str], float]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the post-check opens many connections at once


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


class FakeVLLM(_Base):
    def __init__(
        self,
        model: str = "tiny",
        capacity: int = 2,
        delay: float = 0.02,
        api_key: str | None = None,
        metrics: str = "vllm",
    ) -> None:
        super().__init__()
        self.model = model
        self.capacity = capacity
        self.delay = delay
        self.api_key = api_key
        self.metrics_mode = metrics  # "vllm" | "node" (someone else's /metrics)
        self.cond = threading.Condition()
        self.running = 0
        self.waiting = 0
        self.peak = {"vllm:num_requests_running": 0.0, "vllm:num_requests_waiting": 0.0}
        self.success = dict.fromkeys(FINISH_REASONS, 0)
        self.completion_bodies: list[dict[str, Any]] = []
        self.rejections = {"max_num_queued_reqs": 0, "max_num_queued_tokens": 0}
        self.hist: dict[str, list[float]] = {}  # name -> [count, sum, *bucket counts]
        self.http: dict[tuple[str, str, str], int] = {}

    # --- state ------------------------------------------------------------------------
    def _observe(self, name: str, value: float) -> None:
        h = self.hist.setdefault(name, [0.0, 0.0] + [0.0] * len(LATENCY_BUCKETS))
        h[0] += 1
        h[1] += value
        for i, le in enumerate(LATENCY_BUCKETS):
            if value <= le:
                h[2 + i] += 1

    def _count_http(self, handler: str, method: str, code: int) -> None:
        key = (handler, method, f"{code // 100}xx")
        self.http[key] = self.http.get(key, 0) + 1

    def series(self) -> list[Series]:
        with self.cond:
            base = {"engine": "0", "model_name": self.model}
            out: list[Series] = [
                ("vllm:num_requests_running", dict(base), float(self.running)),
                ("vllm:num_requests_waiting", dict(base), float(self.waiting)),
                ("vllm:kv_cache_usage_perc", dict(base), 0.0),
            ]
            for reason, n in self.success.items():
                out.append(
                    ("vllm:request_success_total", {**base, "finished_reason": reason}, float(n))
                )
            for reason, n in self.rejections.items():
                labels = {"model_name": self.model, "reason": reason}
                out.append(("vllm:admission_rejections_total", labels, float(n)))
            for name in ("vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds"):
                h = self.hist.get(name, [0.0, 0.0] + [0.0] * len(LATENCY_BUCKETS))
                for i, le in enumerate(LATENCY_BUCKETS):
                    le_text = "+Inf" if le == float("inf") else str(le)
                    out.append((f"{name}_bucket", {**base, "le": le_text}, h[2 + i]))
                out.append((f"{name}_count", dict(base), h[0]))
                out.append((f"{name}_sum", dict(base), h[1]))
            for (handler, method, status), n in self.http.items():
                labels = {"handler": handler, "method": method, "status": status}
                out.append(("http_requests_total", labels, float(n)))
            return out

    def sum(self, name: str, labels: Mapping[str, str]) -> float | None:
        found = [
            v
            for n, lab, v in self.series()
            if n == name and all(lab.get(k) == x for k, x in labels.items())
        ]
        return sum(found) if found else None

    def exposition(self) -> str:
        if self.metrics_mode == "node":
            return (
                "# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.\n"
                "# TYPE node_cpu_seconds_total counter\n"
                'node_cpu_seconds_total{cpu="0",mode="idle"} 1234.5\n'
                "go_goroutines 8\n"
            )
        lines = []
        for name, labels, value in self.series():
            inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
            lines.append(f"{name}{{{inner}}} {value}" if inner else f"{name} {value}")
        return (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            + ("\n".join(lines) + "\n")
        )

    # --- HTTP ---------------------------------------------------------------------------
    def handle(self, req: BaseHTTPRequestHandler, method: str, body: bytes | None) -> None:
        path = urlsplit(req.path).path
        if path == "/health":
            return self.reply(req, 200, "", "text/plain")
        if path == "/metrics":
            return self.reply(req, 200, self.exposition(), "text/plain; version=0.0.4")
        if self.api_key and req.headers.get("Authorization") != f"Bearer {self.api_key}":
            with self.cond:
                self._count_http(path, method, 401)
            return self.reply(req, 401, json.dumps({"error": "Unauthorized"}))
        if path == "/v1/models" and method == "GET":
            with self.cond:
                self._count_http(path, method, 200)
            return self.reply(
                req, 200, json.dumps({"object": "list", "data": [{"id": self.model}]})
            )
        if path == "/v1/completions" and method == "POST":
            payload = json.loads(body or b"{}")
            self.completion_bodies.append(payload)
            if payload.get("model") != self.model:
                with self.cond:
                    self._count_http(path, method, 404)
                err = {
                    "message": f"The model `{payload.get('model')}` does not exist.",
                    "code": 404,
                }
                return self.reply(req, 404, json.dumps({"error": err}))
            return self._complete(req, payload)
        with self.cond:
            self._count_http(path, method, 404)
        return self.reply(req, 404, json.dumps({"detail": "Not Found"}))

    def _complete(self, req: BaseHTTPRequestHandler, payload: Mapping[str, Any]) -> None:
        arrived = time.monotonic()
        with self.cond:
            self.waiting += 1
            self.peak["vllm:num_requests_waiting"] = max(
                self.peak["vllm:num_requests_waiting"], self.waiting
            )
            while self.running >= self.capacity:
                self.cond.wait()
            self.waiting -= 1
            self.running += 1
            self.peak["vllm:num_requests_running"] = max(
                self.peak["vllm:num_requests_running"], self.running
            )
        started = time.monotonic()
        time.sleep(self.delay)
        with self.cond:
            self.running -= 1
            self.cond.notify()
            self.success["length"] += 1
            self._observe("vllm:e2e_request_latency_seconds", time.monotonic() - arrived)
            self._observe("vllm:request_queue_time_seconds", started - arrived)
            self._count_http("/v1/completions", "POST", 200)
        n = int(payload.get("max_tokens") or 1)
        answer = {
            "object": "text_completion",
            "model": self.model,
            "choices": [{"index": 0, "text": " hi" * n, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": n, "total_tokens": n + 2},
        }
        self.reply(req, 200, json.dumps(answer))


_UP = re.compile(r"^up\{(.*)\}$")
_SUM = re.compile(r"^sum\(([\w:]+)\{(.*)\}\)$")
_COUNT = re.compile(r"^count\(([\w:]+)\{(.*)\}\)$")
_MAX = re.compile(r"^max\(max_over_time\(([\w:]+)\{(.*)\}\[\d+s\]\)\)$")
_MATCHER = re.compile(r'(\w+)\s*(=~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_NAME = re.compile(r"([a-zA-Z_:][\w:]*)\s*\{")


def _matchers(text: str) -> dict[str, str]:
    return {k: v for k, op, v in _MATCHER.findall(text) if op == "="}


class FakePrometheus(_Base):
    """Answers the shapes of query the post-check sends, from the fake vLLMs' live state."""

    def __init__(
        self, vllms: Iterable[FakeVLLM], node_targets: Iterable[str] = (), job: str = "vllm"
    ) -> None:
        super().__init__()
        self.vllms = list(vllms)
        self.node_targets = list(node_targets)
        self.job = job
        self.queries: list[str] = []

    def _target(self, labels: Mapping[str, str]) -> FakeVLLM | None:
        if labels.get("job") != self.job:
            return None
        for v in self.vllms:
            if v.instance == labels.get("instance") and v.alive:
                return v
        return None

    def evaluate(self, expr: str) -> list[tuple[dict[str, str], float]]:
        if (m := _UP.match(expr)) and "=~" not in expr:
            labels = _matchers(m.group(1))
            out: list[tuple[dict[str, str], float]] = []
            if labels.get("job") == self.job:
                for v in self.vllms:
                    if labels.get("instance") in (None, v.instance):
                        out.append(
                            ({"job": self.job, "instance": v.instance}, 1.0 if v.alive else 0.0)
                        )
            elif labels.get("job") == "node":
                for n in self.node_targets:
                    if labels.get("instance") in (None, n):
                        out.append(({"job": "node", "instance": n}, 1.0))
            return out
        for pattern in (_SUM, _COUNT, _MAX):
            if m := pattern.match(expr):
                name, labels = m.group(1), _matchers(m.group(2))
                target = self._target(labels)
                if target is None:
                    return []
                rest = {k: v for k, v in labels.items() if k not in ("job", "instance")}
                if pattern is _MAX:
                    return [({}, target.peak.get(name, 0.0))]
                if pattern is _COUNT:
                    n = len(
                        [
                            1
                            for s, lab, _ in target.series()
                            if s == name and rest.items() <= lab.items()
                        ]
                    )
                    return [({}, float(n))] if n else []
                value = target.sum(name, rest)
                return [] if value is None else [({}, value)]
        # Anything else (dashboard panels): data if every metric it names exists somewhere.
        known = {"up"} | {s for v in self.vllms if v.alive for s, _, _ in v.series()}
        names = set(_NAME.findall(expr)) - {"by", "without", "on", "ignoring"}
        return [({}, 1.0)] if names and names <= known else []

    def handle(self, req: BaseHTTPRequestHandler, method: str, body: bytes | None) -> None:
        parts = urlsplit(req.path)
        if parts.path == "/api/v1/status/buildinfo":
            return self.reply(
                req, 200, json.dumps({"status": "success", "data": {"version": "2.42.0"}})
            )
        if parts.path == "/api/v1/query":
            expr = parse_qs(parts.query).get("query", [""])[0]
            self.queries.append(expr)
            now = time.time()
            result = [{"metric": lab, "value": [now, repr(v)]} for lab, v in self.evaluate(expr)]
            data = {"resultType": "vector", "result": result}
            return self.reply(req, 200, json.dumps({"status": "success", "data": data}))
        return self.reply(req, 404, "404 page not found", "text/plain")
