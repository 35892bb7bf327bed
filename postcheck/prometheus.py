"""The few Prometheus HTTP API calls the post-check needs."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests

from postcheck.httpclient import describe_error, session, status_detail
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
    def __init__(
        self, base_url: str, timeout_s: float, auth: tuple[str, str] | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.auth = auth  # basic auth (prometheus_web_basic_auth_users), never printed
        self._local = threading.local()  # one kept-alive session per thread, not per query

    def _session(self) -> requests.Session:
        s: requests.Session | None = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = session()
            s.auth = self.auth
        return s

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        resp = self._session().get(f"{self.base_url}{path}", params=params, timeout=self.timeout_s)
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

    def data(self, path: str) -> Mapping[str, Any]:
        """The `data` of a successful API answer (rules, alerts), else CheckFailed."""
        body = self._get(path)
        data = body.get("data") if isinstance(body, Mapping) else None
        if not isinstance(data, Mapping) or body.get("status") != "success":
            raise CheckFailed(f"{path} gave no data: {body!r:.200}")
        return data

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

    def query_range(
        self, expr: str, start: float, end: float, step: float
    ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        """Range query: (labels, [(unix time, value)]) per series; NaN values kept as NaN."""
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        body = self._get("/api/v1/query_range", params)
        if not isinstance(body, Mapping) or body.get("status") != "success":
            err = body.get("error") if isinstance(body, Mapping) else None
            raise CheckFailed(f"Prometheus range query failed: {err or body!r:.300}")
        data = body.get("data") or {}
        if data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
            raise CheckFailed(f"unexpected range result type {data.get('resultType')!r}")
        return [
            (dict(r.get("metric", {})), [(float(t), float(v)) for t, v in r.get("values", [])])
            for r in data["result"]
        ]


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


class Probe:
    """One check answered from a query that many checks share (`sum by (instance) (...)`).

    poll_probes() runs each round's distinct queries once and hands every probe the result:
    with 200 instances, ten queries a round instead of two thousand, and every check waits
    for Prometheus at the same time instead of holding a thread each.
    """

    def __init__(self, name: str, target: str, deadline: float) -> None:
        self.name = name
        self.target = target
        self.deadline = deadline

    def query(self) -> str:
        """The (shared) expression to evaluate this round."""
        raise NotImplementedError

    def attempt(self, result: list[Series]) -> tuple[bool, str]:
        """(passed, detail) from this round's result of query()."""
        raise NotImplementedError

    def extend(self) -> bool:
        """At the deadline: True to keep polling (the probe moved its own deadline)."""
        return False

    def failure(self, detail: str, result: list[Series] | None) -> str:
        """The failed check's detail; result is None when Prometheus itself failed."""
        return detail


def instance_series(result: list[Series], instance: str) -> list[Series]:
    return [s for s in result if s.labels.get("instance") == instance]


def poll_probes(
    prom: Prometheus,
    probes: list[Probe],
    record: Callable[[Probe, bool, str, float], None],
    interval_s: float,
    max_threads: int = 8,
) -> None:
    """Poll until every probe passed or reached its deadline; record(probe, ok, detail, s)."""
    start = time.monotonic()
    pending = list(probes)

    def run(expr: str) -> list[Series] | str:
        try:
            return prom.query(expr)
        except CheckFailed as exc:
            return str(exc)
        except requests.RequestException as exc:
            return describe_error(exc)

    with ThreadPoolExecutor(max_workers=max_threads) as pool:
        while pending:
            exprs = {id(p): p.query() for p in pending}
            distinct = sorted(set(exprs.values()))
            answers = dict(zip(distinct, pool.map(run, distinct), strict=True))
            now = time.monotonic()
            waiting: list[Probe] = []
            for p in pending:
                answer = answers[exprs[id(p)]]
                result = None if isinstance(answer, str) else answer
                if result is None:
                    ok, detail = False, str(answer)
                else:
                    try:
                        ok, detail = p.attempt(result)
                    except Exception as exc:  # a bug or an odd answer: this check fails
                        ok, detail = False, f"unexpected {type(exc).__name__}: {exc}"
                if ok:
                    record(p, True, detail, now - start)
                elif now < p.deadline or p.extend():
                    waiting.append(p)
                else:
                    record(p, False, p.failure(detail, result), now - start)
            pending = waiting
            if pending:
                soonest = min(p.deadline for p in pending)
                time.sleep(max(0.05, min(interval_s, soonest - time.monotonic())))
