"""The few Prometheus HTTP API calls the post-check needs."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests

from postcheck.httpclient import session, status_detail
from postcheck.report import CheckFailed


@dataclass(frozen=True)
class Series:
    labels: Mapping[str, str]
    value: float


def selector(name: str, labels: Mapping[str, str]) -> str:
    """name{k="v",...} with values escaped for PromQL."""

    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"')

    inner = ",".join(f'{k}="{esc(v)}"' for k, v in labels.items())
    return f"{name}{{{inner}}}"


class Prometheus:
    def __init__(self, base_url: str, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        with session() as s:
            resp = s.get(f"{self.base_url}{path}", params=params, timeout=self.timeout_s)
        if resp.status_code in (400, 422):  # a bad query: Prometheus says why in JSON
            try:
                error = resp.json().get("error")
            except (ValueError, AttributeError):
                error = None
            raise CheckFailed(f"Prometheus rejected the query: {error or resp.text[:300]}")
        if resp.status_code != 200:
            raise CheckFailed(f"Prometheus: {status_detail(resp)}")
        try:
            return resp.json()
        except ValueError:
            raise CheckFailed(
                f"Prometheus answered no JSON at {resp.url} (is this Prometheus?)"
            ) from None

    def build_version(self) -> str:
        body = self._get("/api/v1/status/buildinfo")
        data = body.get("data") if isinstance(body, Mapping) else None
        if not isinstance(data, Mapping) or body.get("status") != "success":
            raise CheckFailed(
                "no Prometheus build info at /api/v1/status/buildinfo (is this Prometheus?)"
            )
        return str(data.get("version", "?"))

    def query(self, expr: str) -> list[Series]:
        """Instant query; a scalar result comes back as one series without labels."""
        body = self._get("/api/v1/query", {"query": expr})
        if not isinstance(body, Mapping) or body.get("status") != "success":
            err = body.get("error") if isinstance(body, Mapping) else None
            raise CheckFailed(f"Prometheus query failed: {err or body!r:.300}")
        data = body.get("data") or {}
        rtype, result = data.get("resultType"), data.get("result")
        if rtype == "scalar" and isinstance(result, list):
            return [Series({}, float(result[1]))]
        if rtype == "vector" and isinstance(result, list):
            return [Series(dict(r.get("metric", {})), float(r["value"][1])) for r in result]
        if rtype == "matrix" and isinstance(result, list):
            return [
                Series(dict(r.get("metric", {})), float(r["values"][-1][1]))
                for r in result
                if r.get("values")
            ]
        raise CheckFailed(f"unexpected Prometheus result type {rtype!r}")


def poll(
    attempt: Callable[[], tuple[bool, str]], deadline: float, interval_s: float
) -> tuple[bool, str]:
    """Call attempt() until it reports success or the deadline passes; last answer wins.

    Errors talking to Prometheus are retried too (it may be reloading) and reported if they last.
    """
    while True:
        try:
            ok, detail = attempt()
        except (CheckFailed, requests.RequestException) as exc:
            if time.monotonic() >= deadline:
                raise
            ok, detail = False, str(exc)
        if ok or time.monotonic() >= deadline:
            return ok, detail
        time.sleep(max(0.05, min(interval_s, deadline - time.monotonic())))


def value_text(v: float) -> str:
    if math.isnan(v) or math.isinf(v):
        return str(v)
    return str(int(v)) if v == int(v) and abs(v) < 1e15 else f"{v:.6g}"
