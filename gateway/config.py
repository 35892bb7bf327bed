"""The gateway's configuration file (YAML): schema, defaults and validation.

Every problem is collected, each naming its option (``pools[0].workers[1].capacity``), so one
run of ``vllm-gateway --check-config FILE`` lists them all. Unknown keys are errors too: a typo
must not silently fall back to a default.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gateway.routing import RoutingConfig, check_routing

DEFAULT_API_PORT = 8000
DEFAULT_METRICS_PORT = 8080
# vLLM's API server (uvicorn) closes a connection idle VLLM_HTTP_TIMEOUT_KEEP_ALIVE seconds
# after its last answer; 5 unless set (vllm-project/vllm, vllm/envs.py, 0.32). The gateway
# reuses an idle connection for less, so it never writes a request onto one the worker is
# closing (README: "Upstream connections").
DEFAULT_WORKER_KEEPALIVE_S = 5.0
DEFAULT_UPSTREAM_KEEPALIVE_S = 4.0
# Hung engines (README: "Hung engines"). vLLM answers /health 200 unless its engine is dead, so
# an engine that is alive but makes no progress is found by its silence: a worker with requests
# in flight that sends no response byte for STALL_S gets a one-token canary completion.
# Silence is normal for a while on a healthy GPU worker: a non-streamed answer sends nothing
# until its last token, and a 128k-token prompt is prefilled before the first one. Estimates
# (2 FLOPs per parameter per token plus 4*layers*n^2*d_model/2 for causal attention, at 40 %
# of an H100's dense BF16 peak of 989 TFLOP/s, FP8 counted at BF16 speed): Llama-70B on 4
# H100s ~ (1.8e16 + 2.3e16) FLOP / 1.6e15 FLOP/s ~ 26 s; a 405B model on 8 H100s
# ~ (1.1e17 + 0.7e17) / 3.2e15 ~ 56 s; two such prompts queued ~ 110 s. A full batch of
# 2k-token non-streamed answers at 20-50 tokens/s each runs 40-100 s before one finishes.
# 120 s of silence is past all of these, and only starts a canary: the worker is taken out
# when the canary, too, gets no answer.
DEFAULT_STALL_S = 120.0
# The canary's own wait on a healthy engine: one scheduler step, unless a long prefill holds
# the step's token budget (V1's chunked prefill schedules running requests first) or the batch
# is full (it then waits for a running request to finish, whose bytes count as progress
# too: see gateway/stall.py). 60 s covers one 128k-token prefill on a 405B-class engine
# (~56 s above); the worst case to take a hung worker out is stall_s + canary_timeout_s
# (+ one check), 3 minutes, instead of never.
DEFAULT_CANARY_TIMEOUT_S = 60.0


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` lists every problem, each naming its option."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Listen:
    host: str
    port: int


@dataclass(frozen=True)
class HealthConfig:
    interval_s: float = 5.0
    timeout_s: float = 2.0
    rise: int = 2
    fall: int = 3
    stall_s: float = DEFAULT_STALL_S  # in flight, no response byte this long: a canary
    canary_timeout_s: float = DEFAULT_CANARY_TIMEOUT_S  # no answer to it: the worker is down


@dataclass(frozen=True)
class WorkerConfig:
    name: str
    url: str  # base URL without a trailing slash, e.g. http://10.0.0.5:8000
    capacity: int  # the worker's max-num-seqs: at most this many requests in flight on it
    keepalive_s: float = DEFAULT_WORKER_KEEPALIVE_S  # the worker closes connections idle this long


@dataclass(frozen=True)
class PoolConfig:
    model: str  # the served model name clients send as "model"
    workers: tuple[WorkerConfig, ...]
    queue_size: int = 100
    queue_timeout_s: float = 30.0
    request_timeout_s: float = 600.0
    routing: RoutingConfig = field(default_factory=RoutingConfig)  # gateway/routing.py


@dataclass(frozen=True)
class Config:
    api: Listen
    metrics: Listen
    pools: tuple[PoolConfig, ...]
    health: HealthConfig = HealthConfig()
    connect_timeout_s: float = 5.0
    connect_retries: int = 2
    shutdown_timeout_s: float = 30.0
    retry_after_s: int = 1
    max_body_bytes: int = 16 * 1024 * 1024
    # An idle upstream connection is reused only this long (0: a new one per request); below
    # every worker's keepalive_s.
    upstream_keepalive_s: float = DEFAULT_UPSTREAM_KEEPALIVE_S


class _Checker:
    """Reads typed values out of plain YAML data, recording an error per bad option."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    def mapping(self, value: Any, where: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.error(where, f"must be a mapping, got {type(value).__name__}")
            return {}
        return value

    def unknown(self, data: Mapping[str, Any], allowed: set[str], where: str) -> None:
        for key in data:
            if key not in allowed:
                prefix = f"{where}." if where else ""
                known = ", ".join(sorted(allowed))
                self.error(f"{prefix}{key}", f"unknown option (known: {known})")

    def integer(self, data: Mapping[str, Any], key: str, where: str, default: int,
                minimum: int, maximum: int | None = None) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(where, f"must be an integer, got {value!r}")
            return default
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and <= {maximum}" if maximum is not None else ""
            self.error(where, f"must be >= {minimum}{upper}, got {value}")
            return default
        return value

    def seconds(self, data: Mapping[str, Any], key: str, where: str, default: float,
                allow_zero: bool = False) -> float:
        """A finite number of seconds > 0 (>= 0 with allow_zero: 0 meaning none at all)."""
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(where, f"must be a number of seconds, got {value!r}")
            return default
        in_range = value >= 0 if allow_zero else value > 0  # NaN is in neither
        if not in_range or value == float("inf"):
            bound = ">= 0" if allow_zero else "> 0"
            self.error(where, f"must be a finite number of seconds {bound}, got {value}")
            return default
        return float(value)

    def string(self, data: Mapping[str, Any], key: str, where: str) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not value.strip():
            self.error(where, f"must be a non-empty string, got {value!r}")
            return ""
        return value

    def listen(self, value: Any, where: str, default_port: int) -> Listen:
        data = self.mapping(value, where)
        self.unknown(data, {"host", "port"}, where)
        host = data.get("host", "0.0.0.0")
        if not isinstance(host, str) or not host:
            self.error(f"{where}.host", f"must be an IP address or host name, got {host!r}")
            host = "0.0.0.0"
        # Port 0 asks the kernel for a free port (tests); a deployment names its ports.
        port = self.integer(data, "port", f"{where}.port", default_port, 0, 65535)
        return Listen(host, port)

    def url(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            self.error(where, f"must be a URL such as http://10.0.0.5:8000, got {value!r}")
            return ""
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError as exc:
            self.error(where, f"is not a valid URL ({exc}): {value!r}")
            return ""
        if parts.scheme not in ("http", "https"):
            self.error(where, f"must start with http:// or https://, got {value!r}")
        elif not parts.hostname:
            self.error(where, f"has no host: {value!r}")
        elif parts.query or parts.fragment or parts.username or parts.password:
            self.error(where, f"must not carry a query, fragment or credentials: {value!r}")
        elif port == 0:
            self.error(where, f"port 0 is not a worker's port: {value!r}")
        else:
            return value.rstrip("/")
        return ""


def _pools(check: _Checker, value: Any) -> tuple[PoolConfig, ...]:
    if not isinstance(value, list) or not value:
        check.error("pools", "must be a non-empty list: one pool per served model name")
        return ()
    pools: list[PoolConfig] = []
    models: dict[str, str] = {}
    names: dict[str, str] = {}
    for i, raw in enumerate(value):
        where = f"pools[{i}]"
        data = check.mapping(raw, where)
        check.unknown(data, {"model", "workers", "queue_size", "queue_timeout_s",
                             "request_timeout_s", "routing"}, where)
        model = check.string(data, "model", f"{where}.model")
        if model and model in models:
            check.error(f"{where}.model", f"duplicate served model name {model!r} "
                        f"(also {models[model]})")
        elif model:
            models[model] = f"{where}.model"
        queue_size = check.integer(data, "queue_size", f"{where}.queue_size", 100, 1)
        queue_timeout = check.seconds(data, "queue_timeout_s", f"{where}.queue_timeout_s", 30.0)
        request_timeout = check.seconds(data, "request_timeout_s", f"{where}.request_timeout_s",
                                        600.0)
        raw_workers = data.get("workers")
        if not isinstance(raw_workers, list) or not raw_workers:
            check.error(f"{where}.workers", "must be a non-empty list of workers")
            raw_workers = []
        workers: list[WorkerConfig] = []
        for j, raw_worker in enumerate(raw_workers):
            wwhere = f"{where}.workers[{j}]"
            wdata = check.mapping(raw_worker, wwhere)
            check.unknown(wdata, {"name", "url", "capacity", "keepalive_s"}, wwhere)
            name = check.string(wdata, "name", f"{wwhere}.name")
            if name and name in names:
                check.error(f"{wwhere}.name", f"duplicate worker name {name!r} "
                            f"(also {names[name]})")
            elif name:
                names[name] = f"{wwhere}.name"
            url = check.url(wdata.get("url"), f"{wwhere}.url")
            capacity = check.integer(wdata, "capacity", f"{wwhere}.capacity", 1, 1)
            if "capacity" not in wdata:
                check.error(f"{wwhere}.capacity", "is required (the worker's max-num-seqs)")
            keepalive = check.seconds(wdata, "keepalive_s", f"{wwhere}.keepalive_s",
                                      DEFAULT_WORKER_KEEPALIVE_S, allow_zero=True)
            workers.append(WorkerConfig(name, url, capacity, keepalive))
        routing = _routing(check, data.get("routing"), f"{where}.routing")
        pools.append(PoolConfig(model, tuple(workers), queue_size, queue_timeout,
                                request_timeout, routing))
    return tuple(pools)


def _routing(check: _Checker, value: Any, where: str) -> RoutingConfig:
    """A pool's ``routing`` mapping (gateway/routing.py), each bad option named
    ``pools[0].routing.<option>``."""
    return check_routing(check.mapping(value, where), lambda key: f"{where}.{key}",
                         check.error)


def _check_upstream_keepalive(check: _Checker, idle_s: float,
                              pools: tuple[PoolConfig, ...]) -> None:
    """A connection reused after the worker's own keep-alive ran out may already be closing
    (its FIN still on the way): the request written onto it is lost, a 502."""
    if idle_s == 0:
        return
    late = [f"pools[{i}].workers[{j}].keepalive_s={w.keepalive_s:g} ({w.name})"
            for i, p in enumerate(pools) for j, w in enumerate(p.workers)
            if idle_s >= w.keepalive_s]
    if late:
        check.error("upstream_keepalive_s", f"must be below every worker's keepalive_s (the "
                    f"worker closes connections idle that long), got {idle_s:g} s; not below: "
                    f"{', '.join(late)}; 0 opens a new connection per request")


def _same_address(a: Listen, b: Listen) -> bool:
    if a.port != b.port or a.port == 0:
        return False
    if a.host == b.host:
        return True
    try:  # a wildcard address clashes with every address on the same port
        return any(ipaddress.ip_address(h).is_unspecified for h in (a.host, b.host))
    except ValueError:
        return False


def parse(data: Any) -> Config:
    """Validates plain data (a parsed YAML document); raises ConfigError listing every problem."""
    check = _Checker()
    top = check.mapping(data, "(top level)") if data is not None else {}
    if data is None:
        check.error("(top level)", "the file is empty")
    check.unknown(top, {"api", "metrics", "pools", "health", "connect_timeout_s",
                        "connect_retries", "shutdown_timeout_s", "retry_after_s",
                        "max_body_bytes", "upstream_keepalive_s"}, "")
    api = check.listen(top.get("api"), "api", DEFAULT_API_PORT)
    metrics = check.listen(top.get("metrics"), "metrics", DEFAULT_METRICS_PORT)
    if _same_address(api, metrics):
        check.error("metrics.port", f"clashes with api.port ({api.port}): the API and "
                    "/metrics must listen on separate ports")
    hdata = check.mapping(top.get("health"), "health")
    check.unknown(hdata, {"interval_s", "timeout_s", "rise", "fall", "stall_s",
                          "canary_timeout_s"}, "health")
    health = HealthConfig(
        interval_s=check.seconds(hdata, "interval_s", "health.interval_s", 5.0),
        timeout_s=check.seconds(hdata, "timeout_s", "health.timeout_s", 2.0),
        rise=check.integer(hdata, "rise", "health.rise", 2, 1),
        fall=check.integer(hdata, "fall", "health.fall", 3, 1),
        stall_s=check.seconds(hdata, "stall_s", "health.stall_s", DEFAULT_STALL_S),
        canary_timeout_s=check.seconds(hdata, "canary_timeout_s", "health.canary_timeout_s",
                                       DEFAULT_CANARY_TIMEOUT_S),
    )
    already = any(e.startswith(("health.timeout_s:", "health.interval_s:")) for e in check.errors)
    if health.timeout_s > health.interval_s and not already:
        check.error("health.timeout_s", f"must not exceed health.interval_s "
                    f"({health.timeout_s} > {health.interval_s})")
    already = any(e.startswith(("health.stall_s:", "health.canary_timeout_s:"))
                  for e in check.errors)
    if health.canary_timeout_s > health.stall_s and not already:
        check.error("health.canary_timeout_s", f"must not exceed health.stall_s "
                    f"({health.canary_timeout_s:g} > {health.stall_s:g}): a worker is taken out "
                    "after stall_s of silence and a canary unanswered for canary_timeout_s")
    pools = _pools(check, top.get("pools"))
    config = Config(
        api=api,
        metrics=metrics,
        pools=pools,
        health=health,
        connect_timeout_s=check.seconds(top, "connect_timeout_s", "connect_timeout_s", 5.0),
        connect_retries=check.integer(top, "connect_retries", "connect_retries", 2, 0, 10),
        shutdown_timeout_s=check.seconds(top, "shutdown_timeout_s", "shutdown_timeout_s", 30.0),
        retry_after_s=check.integer(top, "retry_after_s", "retry_after_s", 1, 1, 3600),
        max_body_bytes=check.integer(top, "max_body_bytes", "max_body_bytes", 16 * 1024 * 1024,
                                     1024),
        upstream_keepalive_s=check.seconds(top, "upstream_keepalive_s", "upstream_keepalive_s",
                                           DEFAULT_UPSTREAM_KEEPALIVE_S, allow_zero=True),
    )
    if not any(e.startswith("upstream_keepalive_s:") for e in check.errors):
        _check_upstream_keepalive(check, config.upstream_keepalive_s, pools)
    if check.errors:
        raise ConfigError(check.errors)
    return config


def load(path: Path) -> Config:
    """Reads and validates a configuration file; raises ConfigError listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from exc
    return parse(data)
