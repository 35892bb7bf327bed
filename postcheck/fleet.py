"""What the post-check checks: vLLM instances, node exporters, Prometheus, as plain data."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit


class UsageError(Exception):
    """Bad command line or input (inventory, URL, file): the post-check cannot start (exit 2)."""


@dataclass(frozen=True)
class Worker:
    """One vLLM server (one `vllm_instances` entry of one host)."""

    label: str  # how reports name it, e.g. "gpu1/main" or "10.0.0.5:8000"
    base_url: str  # e.g. "http://10.0.0.5:8000" (no trailing slash)
    model: str | None  # served model name; None: take the first one /v1/models lists
    api_key: str | None = field(default=None, repr=False)
    vllm_version: str | None = None  # the host's vllm_version hostvar; None: the role default
    # Requests it runs at once (vLLM's --max-num-seqs x data-parallel-size) and where that
    # came from (capacity.py); None: unknown, the load finds it from the instance's gauges.
    capacity: int | None = None
    capacity_source: str = "not known (no inventory)"
    # Where its /metrics is when not on the API's port (a gateway's); None: base_url/metrics.
    metrics_url: str | None = None

    @property
    def instance(self) -> str:
        """The `instance` label Prometheus gives this target: host:port of its /metrics."""
        return host_port(self.metrics_url or self.base_url)


@dataclass(frozen=True)
class GatewayPool:
    """One model's pool on a gateway (roles/gateway: one per served model name)."""

    model: str
    capacity: int  # requests its workers run at once: their max-num-seqs, summed
    queue_size: int  # requests it queues beyond that before answering 429
    api_key: str | None = field(default=None, repr=False)  # its workers' vllm_api_key


@dataclass(frozen=True)
class Gateway:
    """One host of the gateways group: an API port in front of the workers, /metrics apart."""

    label: str  # the inventory host name
    base_url: str  # the API, e.g. "http://10.0.0.9:8000"
    metrics_url: str  # e.g. "http://10.0.0.9:8080/metrics"
    pools: tuple[GatewayPool, ...]

    def as_worker(self, pool: GatewayPool) -> Worker:
        """What the load and the signal checks address: the gateway's API for one pool."""
        return Worker(
            label=f"{self.label}/{pool.model}",
            base_url=self.base_url,
            model=pool.model,
            api_key=pool.api_key,
            capacity=pool.capacity,
            capacity_source="its workers' max-num-seqs, summed",
            metrics_url=self.metrics_url,
        )


@dataclass(frozen=True)
class Fleet:
    workers: tuple[Worker, ...]
    node_targets: tuple[str, ...]  # "host:port" of every node_exporter
    prometheus_url: str | None  # None: no Prometheus known, its checks are skipped
    scrape_interval_s: float
    source: str  # where the fleet came from, for the report
    prometheus_missing_reason: str = "no Prometheus given"
    grafana_url: str | None = None  # None: the Grafana checks are skipped, saying why
    grafana_missing_reason: str = "no --grafana given"
    grafana_admin_user: str | None = None  # the monitoring host's grafana_admin_user
    # Dashboards (file names without .json) the grafana role provisions; None: its default.
    grafana_dashboards: tuple[str, ...] | None = None
    grafana_verify_tls: bool = True  # grafana_validate_certs (external mode)
    # (user, password) when Prometheus has basic auth: prometheus_web_basic_auth_users' first.
    prometheus_auth: tuple[str, str] | None = None
    gateways: tuple[Gateway, ...] = ()

    @property
    def secrets(self) -> tuple[str, ...]:
        keys = tuple(w.api_key for w in self.workers if w.api_key)
        return keys + ((self.prometheus_auth[1],) if self.prometheus_auth else ())


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_duration(text: str) -> float:
    """Seconds of a Prometheus duration ("15s", "1m30s", "500ms") or of a plain number."""
    text = str(text).strip()
    try:
        value = float(text)
    except ValueError:
        pos, total = 0, 0.0
        for m in _DURATION_PART.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNIT_S[m.group(2)]
            pos = m.end()
        if pos != len(text) or not text:
            raise UsageError(f"not a duration: {text!r} (use e.g. 15s, 1m, 500ms)") from None
        value = total
    if value <= 0:
        raise UsageError(f"duration must be positive: {text!r}")
    return value


def prom_duration(seconds: float) -> str:
    """A whole-second Prometheus duration, at least 1s."""
    return f"{max(1, round(seconds))}s"


def format_host(host: str) -> str:
    """host as it appears before ":port" (IPv6 addresses in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def host_port(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{format_host(host)}:{port}"


def split_listen_address(address: str) -> tuple[str, int]:
    """("0.0.0.0", 9090) from "0.0.0.0:9090"; accepts "[::]:9090" and ":9090"."""
    host, sep, port = str(address).strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"not a listen address host:port: {address!r}")
    return host.strip("[]") if host.startswith("[") else host, int(port)


def normalize_url(url: str, what: str) -> str:
    """An http(s) URL without trailing slash, or UsageError naming `what`."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise UsageError(f"bad {what} URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"bad {what} URL {url!r}: need http(s)://host[:port]")
    return url.rstrip("/")
