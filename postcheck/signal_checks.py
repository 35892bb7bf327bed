"""Per-instance assertions of templates/signals.yml: on /metrics, then through Prometheus."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from postcheck import defaults
from postcheck.fleet import Worker, prom_duration
from postcheck.load import LoadOutcome, LoadResult
from postcheck.prometheus import Prometheus, poll, selector, value_text
from postcheck.report import CheckFailed
from postcheck.signals import MetricExpectation

DELTA_MEANING = {
    "requests": "completions answered 200",
    "invalid_requests": "invalid requests answered 4xx",
}


def expected_delta(exp: MetricExpectation, result: LoadResult) -> tuple[float, str]:
    if exp.delta == "requests":
        return float(result.completions_ok), DELTA_MEANING["requests"]
    if exp.delta == "invalid_requests":
        return float(result.invalid_4xx), DELTA_MEANING["invalid_requests"]
    return float(exp.delta or 0), "no change expected"


def metrics_check(exp: MetricExpectation, outcome: LoadOutcome) -> Callable[[], str]:
    """The /metrics side of one expectation, as a check function."""

    def check() -> str:
        sel = exp.selector
        after = outcome.after.sum(exp.name, exp.labels)
        if after is None and not (exp.absent_ok and exp.kind == "counter_delta"):
            raise CheckFailed(f"{sel}: no such series in /metrics after the load")
        if exp.kind == "counter_delta":
            before = outcome.before.sum(exp.name, exp.labels) or 0.0
            want, meaning = expected_delta(exp, outcome.result)
            got = (after or 0.0) - before
            text = f"{sel}: {value_text(before)} -> {value_text(after or 0.0)}, +{value_text(got)}"
            if not math.isclose(got, want, abs_tol=1e-9):
                raise CheckFailed(f"{text}, expected +{value_text(want)} ({meaning})")
            return f"{text} = {meaning}" if exp.delta in DELTA_MEANING else f"{text} (as expected)"
        if exp.kind == "gauge_seen_above_zero":
            peak = outcome.result.peaks.get(exp.name, 0.0)
            polls = outcome.result.polls
            if not peak > 0:
                hint = ""
                if exp.name.endswith("waiting"):
                    hint = " (requests queue only if --concurrency exceeds the --max-num-seqs)"
                raise CheckFailed(f"{sel}: never above 0 in {polls} polls during the load{hint}")
            return f"{sel}: peak {value_text(peak)} during the load ({polls} polls)"
        if exp.kind == "present":
            n = len(outcome.after.matching(exp.name, exp.labels))
            return f"{sel}: {n} series"
        raise CheckFailed(f"{sel}: expectation {exp.kind} has no /metrics side")

    return check


def prometheus_check(
    exp: MetricExpectation,
    worker: Worker,
    job: str,
    prom: Prometheus,
    outcome: LoadOutcome | None,
    deadline: float,
    poll_s: float,
) -> Callable[[], str]:
    """The Prometheus side of one expectation for one instance, polled until the deadline."""
    target_labels = {"job": job, "instance": worker.instance}
    sel = selector(exp.name, {**target_labels, **exp.labels})

    def check() -> str:
        if exp.kind == "up":
            return up_check(prom, job, worker.instance, deadline, poll_s)()
        assert outcome is not None
        if exp.kind == "counter_delta":
            want = outcome.after.sum(exp.name, exp.labels)
            expr = f"sum({sel})"

            def attempt() -> tuple[bool, str]:
                got = prom.query(expr)
                if not got:
                    return want is None, f"{expr} has no data"
                value = got[0].value
                return (
                    want is not None and math.isclose(value, want, abs_tol=1e-9),
                    f"{expr} = {value_text(value)}",
                )

            ok, detail = poll(attempt, deadline, poll_s)
            want_text = "absent" if want is None else value_text(want)
            if not ok:
                raise CheckFailed(f"{detail}, but /metrics shows {want_text} after the load")
            return (
                f"{detail} = /metrics after the load"
                if want is not None
                else f"{detail} (absent in /metrics too)"
            )
        if exp.kind == "gauge_seen_above_zero":

            def attempt() -> tuple[bool, str]:
                window = prom_duration(time.time() - outcome.result.started_at + poll_s + 1)
                expr = f"max(max_over_time({sel}[{window}]))"
                got = prom.query(expr)
                value = got[0].value if got else None
                return (
                    value is not None and value > 0
                ), f"{expr} = {'no data' if value is None else value_text(value)}"

            ok, detail = poll(attempt, deadline, poll_s)
            if not ok:
                raise CheckFailed(f"{detail}: Prometheus never scraped it above 0 during the load")
            return detail
        if exp.kind == "present":
            expr = f"count({sel})"

            def attempt() -> tuple[bool, str]:
                got = prom.query(expr)
                n = int(got[0].value) if got else 0
                return n > 0, f"{expr} = {n}"

            ok, detail = poll(attempt, deadline, poll_s)
            if not ok:
                raise CheckFailed(f"{detail}: series missing in Prometheus")
            return detail
        raise CheckFailed(f"expectation {exp.kind} has no Prometheus side")

    return check


def up_check(
    prom: Prometheus, job: str, instance: str, deadline: float, poll_s: float
) -> Callable[[], str]:
    """up{job, instance} == 1, waiting up to the deadline (a new target needs one scrape).

    While the target has no `up` series at all, wait longer: Prometheus may not have applied
    a just-reloaded scrape config yet (PROMETHEUS_DISCOVERY_S).
    """
    expr = selector("up", {"job": job, "instance": instance})

    def check() -> str:
        seen = False

        def attempt() -> tuple[bool, str]:
            nonlocal seen
            got = prom.query(expr)
            if not got:
                return False, f"{expr} has no data"
            seen = True
            return got[0].value == 1, f"{expr} = {value_text(got[0].value)}"

        ok, detail = poll(attempt, deadline, poll_s)
        if not ok and not seen:
            ok, detail = poll(attempt, deadline + defaults.PROMETHEUS_DISCOVERY_S, poll_s)
        if ok:
            return detail
        if "no data" in detail:
            known = sorted(
                {s.labels.get("instance", "?") for s in prom.query(selector("up", {"job": job}))}
            )
            raise CheckFailed(
                f"{detail}: Prometheus does not scrape {instance} in job {job!r} "
                f"(it scrapes {known or 'nothing'} there; scrape config out of date?)"
            )
        raise CheckFailed(f"{detail}: Prometheus cannot scrape it (see its /targets page)")

    return check
