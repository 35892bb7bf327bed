"""Checks of one vLLM instance on its own: /health, /v1/models, one completion, /metrics,
and its /version against the pinned release with the metric families the project uses."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import requests

from postcheck.fleet import Worker
from postcheck.httpclient import describe_error, session, status_detail
from postcheck.promtext import Exposition, ParseError, parse
from postcheck.report import CheckFailed, CheckSkipped, Reporter
from postcheck.vllm_metrics import Required, present_families

PROMPT = "Hello"
MAX_TOKENS = 4
METRICS_ACCEPT = "text/plain;version=0.0.4"


@dataclass
class WorkerState:
    """What the later phases need to know about an instance after its own checks."""

    worker: Worker
    model: str | None = None  # the served model name, confirmed by /v1/models
    unreachable: str | None = None  # why nothing else can be asked
    completion_ok: bool = False
    completion_s: float | None = None  # how long the single completion took (load timeouts)
    metrics_ok: bool = False
    not_loadable: str | None = None  # why the load is skipped (a failed check says more)
    version: str | None = None  # what /version says


@dataclass(frozen=True)
class FamiliesExpectation:
    """metrics.families: the release pinned for this instance and what it must serve."""

    pinned: str
    required: tuple[Required, ...]


def get_json(s: requests.Session, url: str, timeout: float) -> Any:
    resp = s.get(url, timeout=timeout)
    if resp.status_code != 200:
        raise CheckFailed(status_detail(resp))
    try:
        return resp.json()
    except ValueError:
        raise CheckFailed(f"answer of {url} is not JSON: {resp.text[:120]!r}") from None


def completion(
    s: requests.Session,
    worker: Worker,
    model: str,
    timeout: float,
    max_tokens: int = MAX_TOKENS,
) -> requests.Response:
    """POST one completion; beyond the smallest, EOS is ignored so its length is fixed."""
    body = completion_body(model, max_tokens)
    return s.post(f"{worker.base_url}/v1/completions", json=body, timeout=timeout)


def completion_body(model: str, max_tokens: int = MAX_TOKENS) -> dict[str, object]:
    body: dict[str, object] = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens}
    if max_tokens > MAX_TOKENS:
        body["ignore_eos"] = True  # vLLM's extension of the OpenAI API
    return body


def fetch_metrics(
    s: requests.Session, worker: Worker, timeout: float, only: Iterable[str] | None = None
) -> Exposition:
    """The instance's /metrics, parsed (just the samples named in `only`, if given);
    CheckFailed if unreachable or not Prometheus text."""
    resp = s.get(f"{worker.base_url}/metrics", timeout=timeout, headers={"Accept": METRICS_ACCEPT})
    if resp.status_code != 200:
        raise CheckFailed(f"/metrics: {status_detail(resp)}")
    try:
        return parse(resp.text, only)
    except ParseError as exc:
        raise CheckFailed(f"/metrics is not Prometheus text format: {exc}") from None


def parse_metrics(status: int, text: str, only: Iterable[str] | None = None) -> Exposition:
    """fetch_metrics' verdict on an answer fetched some other way (KeepAlive)."""
    if status != 200:
        raise CheckFailed(f"/metrics: HTTP {status}: {' '.join(text.split())[:200]}")
    try:
        return parse(text, only)
    except ParseError as exc:
        raise CheckFailed(f"/metrics is not Prometheus text format: {exc}") from None


def require_vllm(expo: Exposition, model: str | None) -> str:
    """Detail for a vLLM /metrics, or CheckFailed saying what it is instead."""
    vllm_names = sorted(n for n in expo.names() if n.startswith("vllm:"))
    if not vllm_names:
        others = sorted({n.split("_")[0] for n in expo.names()})[:6]
        raise CheckFailed(
            f"/metrics has no vllm:* metrics ({len(expo.samples)} samples, prefixes {others}): "
            "not a vLLM server, or started with --disable-log-stats"
        )
    models = expo.label_values("vllm:", "model_name")
    if model is not None and model not in models:
        raise CheckFailed(f"/metrics reports model_name {sorted(models)}, expected {model!r}")
    engines = expo.label_values("vllm:", "engine")
    return (
        f"{len(vllm_names)} vllm:* sample names, model_name {sorted(models)}, "
        f"engines {sorted(engines)}"
    )


def read_version(s: requests.Session, worker: Worker, timeout: float) -> tuple[str | None, str]:
    """(the version /version reports, or None and why not)."""
    try:
        body = get_json(s, f"{worker.base_url}/version", timeout)
    except CheckFailed as exc:
        return None, str(exc)
    except requests.RequestException as exc:
        return None, describe_error(exc)
    version = body.get("version") if isinstance(body, dict) else None
    if not isinstance(version, str) or not version:
        return None, f"no version in {str(body)[:80]!r}"
    return version, ""


def same_release(version: str, pinned: str) -> bool:
    """0.32.0+cpu is release 0.32.0 (a PEP 440 local label names a build, not a release)."""
    return version.split("+", 1)[0].strip() == pinned.split("+", 1)[0].strip()


def families_detail(
    expo: Exposition, version: str | None, why_unknown: str, expect: FamiliesExpectation
) -> str:
    """The metrics.families verdict: every family the signals and dashboards use is served."""
    required = expect.required
    present = present_families(expo, [r.family for r in required])
    missing = [r for r in required if r.family not in present]
    same = version is not None and same_release(version, expect.pinned)
    if version is None:
        versions = f"vLLM version unknown (/version: {why_unknown}), pinned {expect.pinned}"
    elif same:
        versions = f"vLLM {version} = pinned {expect.pinned}"
    else:
        versions = f"vLLM {version} differs from pinned {expect.pinned}"
    n = len(required)
    if missing:
        listed = "; ".join(
            f"{r.family} (used by {', '.join(r.used_by)}"
            + ("" if r.listed else f"; not in vLLM {expect.pinned}'s family list either")
            + ")"
            for r in missing
        )
        raise CheckFailed(
            f"{versions}: /metrics lacks {len(missing)} of the {n} families the signals and "
            f"dashboards use: {listed}"
        )
    if not same:
        return (
            f"{versions}: none missing, all {n} families the signals and dashboards use are "
            "in /metrics"
        )
    return f"{versions}: all {n} families the signals and dashboards use are in /metrics"


def check_worker(
    worker: Worker,
    reporter: Reporter,
    timeout: float,
    families: FamiliesExpectation | None = None,
) -> WorkerState:
    """health -> models -> completion -> metrics -> metrics.families, each reported; returns
    what later phases need."""
    state = WorkerState(worker=worker, model=worker.model)
    t = worker.label
    scraped: list[Exposition] = []  # the full /metrics, for metrics.families, then dropped
    with session(worker.api_key) as s:

        def health() -> str:
            try:
                resp = s.get(f"{worker.base_url}/health", timeout=timeout)
            except requests.RequestException as exc:
                state.unreachable = describe_error(exc)
                raise
            if resp.status_code != 200:
                raise CheckFailed(f"/health: {status_detail(resp)}")
            return f"/health 200 at {worker.base_url}"

        def unreachable_guard() -> None:
            if state.unreachable:
                raise CheckSkipped(f"instance unreachable (see health): {state.unreachable}")

        def models() -> str:
            unreachable_guard()
            body = get_json(s, f"{worker.base_url}/v1/models", timeout)
            data = body.get("data") if isinstance(body, dict) else None
            ids = (
                [str(m.get("id")) for m in data if isinstance(m, dict)]
                if isinstance(data, list)
                else []
            )
            if not ids:
                raise CheckFailed(f"/v1/models lists no model: {str(body)[:200]}")
            if worker.model is None:
                state.model = ids[0]
                return f"serves {ids} (using {ids[0]!r})"
            if worker.model not in ids:
                raise CheckFailed(f"/v1/models lists {ids}, not the served model {worker.model!r}")
            return f"serves {worker.model!r}"

        def one_completion() -> str:
            unreachable_guard()
            if state.model is None:
                raise CheckSkipped("no model name known (see models)")
            start = time.monotonic()
            resp = completion(s, worker, state.model, timeout)
            seconds = time.monotonic() - start
            if resp.status_code != 200:
                raise CheckFailed(f"POST /v1/completions: {status_detail(resp)}")
            try:
                body = resp.json()
                text = body["choices"][0]["text"]
                usage = body.get("usage") or {}
            except (ValueError, KeyError, IndexError, TypeError):
                raise CheckFailed(
                    f"completion answer has no choices[0].text: {resp.text[:200]!r}"
                ) from None
            if not isinstance(text, str):
                raise CheckFailed("completion answer's choices[0].text is not a string")
            state.completion_ok = True
            state.completion_s = seconds
            return (
                f"{state.model!r} answered {text!r} ({usage.get('completion_tokens', '?')} tokens) "
                f"in {seconds:.2f}s"
            )

        def metrics() -> str:
            unreachable_guard()
            expo = fetch_metrics(s, worker, timeout)
            scraped.append(expo)
            detail = require_vllm(expo, state.model)
            state.metrics_ok = True
            return detail

        def metrics_families() -> str:
            unreachable_guard()
            assert families is not None
            if not scraped:
                raise CheckSkipped("no /metrics to read (see metrics)")
            expo = scraped.pop()
            if not any(n.startswith("vllm:") for n in expo.names()):
                raise CheckSkipped("/metrics is not vLLM's (see metrics)")
            state.version, why = read_version(s, worker, timeout)
            return families_detail(expo, state.version, why, families)

        reporter.run("health", t, health)
        reporter.run("models", t, models)
        reporter.run("completion", t, one_completion)
        reporter.run("metrics", t, metrics)
        if families is not None:
            reporter.run("metrics.families", t, metrics_families)
        scraped.clear()

    if not state.completion_ok:
        state.not_loadable = "the single completion failed (see completion)"
    elif not state.metrics_ok:
        state.not_loadable = "its /metrics is not usable (see metrics)"
    return state
