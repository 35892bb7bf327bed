"""HTTP helpers: sessions with the worker's API key, and failures described in plain words."""

from __future__ import annotations

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
