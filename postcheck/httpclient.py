"""HTTP helpers: sessions with the worker's API key, a lean kept-alive connection for the
load's many requests, and failures described in plain words."""

from __future__ import annotations

import errno
import http.client
import select
import socket
import ssl
import time
from urllib.parse import urlsplit

import requests

USER_AGENT = "vllm-fleet-postcheck/0.1"


def session(api_key: str | None = None) -> requests.Session:
    """A session for one thread (requests.Session is not shared between threads here)."""
    s = requests.Session()
    s.headers["User-Agent"] = USER_AGENT
    s.trust_env = False  # fleet addresses are private: never send them through a proxy
    if api_key:
        s.headers["Authorization"] = f"Bearer {api_key}"
    return s


def describe_error(exc: requests.RequestException) -> str:
    """What went wrong, without a traceback: refused, DNS, timeout, ..."""
    url = exc.request.url if exc.request is not None else None
    where = f" ({url})" if url else ""
    text = str(exc)
    if isinstance(exc, requests.ConnectTimeout):
        return f"connect timeout: host does not answer{where}"
    if isinstance(exc, requests.ReadTimeout):
        return f"timeout: connected but no answer in time{where}"
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        return f"invalid URL: {text}"
    if isinstance(exc, requests.ConnectionError):
        if (
            "Failed to resolve" in text
            or "Name or service not known" in text
            or "name resolution" in text
        ):
            return f"DNS lookup failed: host name does not resolve{where}"
        if "Connection refused" in text:
            return f"connection refused: nothing listens on that port{where}"
        if "No route to host" in text or "Network is unreachable" in text:
            return f"host unreachable{where}"
        if "RemoteDisconnected" in text or "Connection aborted" in text:
            return f"connection closed without an answer{where}"
        return f"connection failed{where}: {text[:300]}"
    return f"{type(exc).__name__}: {text[:300]}"


def status_detail(resp: requests.Response) -> str:
    """One line for an unexpected HTTP status."""
    if resp.status_code == 401:
        return (
            "HTTP 401 Unauthorized: API key missing or wrong (hostvar vllm_api_key / --api-key-env)"
        )
    body = " ".join(resp.text.split())[:200]
    return f"HTTP {resp.status_code} from {resp.url}: {body or '(empty body)'}"


class TransportError(Exception):
    """A request of KeepAlive failed before an answer; the message says why, in words."""


def _dropped(sock: socket.socket) -> bool:
    """An idle kept-alive socket that is readable was closed by the server (or is garbage)."""
    p = select.poll()  # not select.select: fleets need file descriptors above 1024
    p.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(p.poll(0))


def describe_os_error(exc: BaseException, url: str, connecting: bool) -> str:
    """describe_error's words for what http.client and the socket layer raise."""
    where = f" ({url})"
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup failed: host name does not resolve{where}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused: nothing listens on that port{where}"
    if isinstance(exc, TimeoutError):
        if connecting:
            return f"connect timeout: host does not answer{where}"
        return f"timeout: connected but no answer in time{where}"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"host unreachable{where}"
    closed = (
        http.client.RemoteDisconnected,
        http.client.IncompleteRead,
        ConnectionResetError,
        BrokenPipeError,
    )
    if isinstance(exc, closed):
        return f"connection closed without an answer{where}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error{where}: {str(exc)[:200]}"
    return f"connection failed{where}: {type(exc).__name__}: {str(exc)[:200]}"


class KeepAlive:
    """One kept-alive HTTP/1.1 connection for one thread's many small requests.

    The load's hot path (every completion, every /metrics poll): about a quarter of the CPU
    requests needs per request, which decides whether one post-check process can keep
    --concurrency requests in flight at each of hundreds of instances. Never retries (a
    retried completion would be counted twice); a connection the server closed while idle
    is noticed before it is reused, and one idle for IDLE_REUSE_S or longer is not reused at
    all: vLLM closes idle connections after 5 s (VLLM_HTTP_TIMEOUT_KEEP_ALIVE), and a request
    written just as it does would fail with no answer.
    """

    IDLE_REUSE_S = 2.0

    def __init__(self, base_url: str, api_key: str | None, timeout: float) -> None:
        parts = urlsplit(base_url)
        self.base_url = base_url.rstrip("/")
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.conn: http.client.HTTPConnection | None = None
        self.idle_since = 0.0

    def _connect(self, url: str) -> http.client.HTTPConnection:
        idle_too_long = time.monotonic() - self.idle_since >= self.IDLE_REUSE_S
        if self.conn is not None and (
            idle_too_long or self.conn.sock is None or _dropped(self.conn.sock)
        ):
            self.close()
        if self.conn is None:
            cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            conn = cls(self.host, self.port, timeout=self.timeout)
            try:
                conn.connect()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise TransportError(describe_os_error(exc, url, connecting=True)) from None
            self.conn = conn
        return self.conn

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """(HTTP status, body); TransportError when no answer came."""
        url = f"{self.base_url}{path}"
        conn = self._connect(url)
        try:
            all_headers = {**self.headers, **(headers or {})}
            conn.request(method, f"{self.prefix}{path}", body=body, headers=all_headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise TransportError(describe_os_error(exc, url, connecting=False)) from None
        if resp.will_close:
            self.close()
        self.idle_since = time.monotonic()
        return resp.status, data

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def __enter__(self) -> KeepAlive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
