"""The gateway's six metric families, on a private registry, with no ``_created`` series.

Semantics (gateway/README.md, "Metrics"):

* ``gateway_requests_total{model,code}``: once per client request on the API port, when the
  gateway has finished with it (including the 404/429/503 it answers itself).
* ``gateway_request_latency_seconds{model}``: once per request dispatched to a worker, from
  arrival to the last byte written to the client (queue wait included).
* ``gateway_queue_depth{model}``: requests waiting in that pool's queue now.
* ``gateway_queue_wait_seconds{model}``: once per dispatched request, at dispatch: arrival
  to dispatch (0 when a slot was free).
* ``gateway_errors_total{model,reason}``: at most once per client request, for a failure the
  client saw; every reason exists at 0 from start-up for every pool and for ``model=""``.
* ``gateway_worker_up{worker,model}``: 1 when the worker takes new requests (healthy and not
  drained), else 0; every configured worker from start-up, at 0 until its first good check.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# The label value of requests that reached no pool (unknown model, unreadable body, /v1/models).
NO_MODEL = ""

# Every error reason, each pre-created at 0 (README: "Error reasons").
REASONS = (
    "bad_request",  # 400: the body is not JSON or names no model
    "unknown_model",  # 404: no pool serves that model
    "queue_full",  # 429: the pool's queue is full
    "queue_timeout",  # 503: waited queue_timeout_s for a slot
    "no_worker",  # 503: the pool has no ready worker
    "shutting_down",  # 503: the gateway is draining after SIGTERM
    "upstream_connect",  # 502: no worker could be connected to, retries included
    "upstream_timeout",  # 504 (or a cut stream): request_timeout_s passed
    "upstream_disconnect",  # 502 (or a cut stream): the worker dropped the connection mid-request
    "upstream_5xx",  # the worker answered 5xx (passed through)
    "upstream_4xx",  # the worker answered 4xx (passed through; e.g. a bad API key)
    "worker_stalled",  # 504 (or a cut stream): in flight on a worker taken out as hung
    "client_disconnect",  # the client went away before the response was complete
    "internal_error",  # 500: a bug in the gateway (logged with its traceback)
)

# From 5 ms (a fast answer) to 10 minutes (a long generation on a CPU worker).
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
    300.0, 600.0,
)
QUEUE_WAIT_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    300.0,
)


class _WithoutCreated(Collector):
    """Exposes the wrapped metrics without their ``*_created`` samples.

    prometheus_client's own switch (``disable_created_metrics``) is process-wide; this keeps
    the choice inside the gateway's registry.
    """

    def __init__(self, metrics: Sequence[Counter | Gauge | Histogram]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        for wrapper in self._metrics:
            for metric in wrapper.collect():
                metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
                yield metric


class Metrics:
    """The six families of one gateway instance."""

    def __init__(self, models: Sequence[str], workers: Sequence[tuple[str, str]]) -> None:
        """``models``: every pool's model; ``workers``: (worker, model) for every worker."""
        self.requests = Counter("gateway_requests_total",
                                "Client requests answered by the gateway, by HTTP status",
                                ["model", "code"], registry=None)
        self.latency = Histogram("gateway_request_latency_seconds",
                                 "Arrival to last byte of requests dispatched to a worker "
                                 "(queue wait included)",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=None)
        self.queue_depth = Gauge("gateway_queue_depth",
                                 "Requests waiting in the gateway's queue for a worker slot",
                                 ["model"], registry=None)
        self.queue_wait = Histogram("gateway_queue_wait_seconds",
                                    "Arrival to dispatch of requests dispatched to a worker",
                                    ["model"], buckets=QUEUE_WAIT_BUCKETS, registry=None)
        self.errors = Counter("gateway_errors_total",
                              "Client requests that failed, by reason (at most one each)",
                              ["model", "reason"], registry=None)
        self.worker_up = Gauge("gateway_worker_up",
                               "1 when the worker takes new requests (healthy, not drained)",
                               ["worker", "model"], registry=None)
        for model in (NO_MODEL, *models):
            for reason in REASONS:
                self.errors.labels(model=model, reason=reason)
        self._requests: dict[tuple[str, int], Counter] = {}
        self._latency: dict[str, Histogram] = {}
        self._queue_wait: dict[str, Histogram] = {}
        for model in models:
            self.queue_depth.labels(model=model).set(0)
            self._latency[model] = self.latency.labels(model=model)
            self._queue_wait[model] = self.queue_wait.labels(model=model)
        for worker, model in workers:
            self.worker_up.labels(worker=worker, model=model).set(0)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_WithoutCreated([
            self.requests, self.latency, self.queue_depth, self.queue_wait, self.errors,
            self.worker_up,
        ]))

    def finished(self, model: str, code: int, reason: str | None,
                 latency_s: float | None) -> None:
        """One client request is over: requests_total, errors_total and (when it was
        dispatched) the latency histogram. Label children are cached: this runs per request."""
        key = (model, code)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.requests.labels(model=model, code=str(code))
        counter.inc()
        if reason is not None:
            self.errors.labels(model=model, reason=reason).inc()
        if latency_s is not None:
            self._latency[model].observe(latency_s)

    def dispatched(self, model: str, queue_wait_s: float) -> None:
        self._queue_wait[model].observe(queue_wait_s)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
