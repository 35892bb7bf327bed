"""Per-instance assertions of templates/signals.yml: on /metrics, then through Prometheus.

The Prometheus side is a set of probes (prometheus.Probe): every instance's check of one
expectation reads the same `... by (instance)` query, polled together until the deadline.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from postcheck import defaults
from postcheck.fleet import Worker, prom_duration
from postcheck.load import LoadOutcome, LoadResult
from postcheck.prometheus import Probe, Series, instance_series, selector, value_text
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


def lower_bound_detail(exp: MetricExpectation, got: float, result: LoadResult) -> str:
    """A counter's verdict beside other traffic: at least what was sent; errors attributed."""
    want, meaning = expected_delta(exp, result)
    if exp.delta in DELTA_MEANING:
        if got < want - 1e-9:
            raise CheckFailed(
                f"+{value_text(got)}, expected at least +{value_text(want)} ({meaning}) even "
                f"beside other traffic ({result.other_traffic})"
            )
        return (
            f"+{value_text(got)} >= +{value_text(want)} {meaning} (a lower bound: other "
            f"traffic, {result.other_traffic})"
        )
    ours = "none" if not result.answered_5xx else f"{result.answered_5xx} answered 5xx"
    if got <= 0:
        return f"+{value_text(got)} (as expected; other traffic: {result.other_traffic})"
    return (
        f"+{value_text(got)}: of the post-check's requests {ours} (see load); the rest come "
        f"from other traffic, origin unknown ({result.other_traffic})"
    )


def metrics_check(
    exp: MetricExpectation, outcome: LoadOutcome, elsewhere: str = ""
) -> Callable[[], str]:
    """The /metrics side of one expectation, as a check function. `elsewhere`: where the
    queue is proven when this instance is not a queue probe."""

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
            if outcome.result.other_traffic:
                try:
                    return f"{sel}: {lower_bound_detail(exp, got, outcome.result)}"
                except CheckFailed as exc:
                    raise CheckFailed(f"{sel}: {exc}") from None
            if not math.isclose(got, want, abs_tol=1e-9):
                raise CheckFailed(f"{text}, expected +{value_text(want)} ({meaning})")
            return f"{text} = {meaning}" if exp.delta in DELTA_MEANING else f"{text} (as expected)"
        if exp.kind == "gauge_seen_above_zero" and not outcome.probe:
            n = len(outcome.after.matching(exp.name, exp.labels))
            return f"{sel}: {n} series (not a queue probe; {elsewhere})"
        if exp.kind == "gauge_seen_above_zero":
            peak = outcome.result.peaks.get(exp.name, 0.0)
            polls = outcome.result.polls
            if not peak > 0:
                hint = ""
                if exp.name.endswith("waiting"):
                    hint = (
                        f" ({outcome.result.in_flight} in flight: requests queue only above "
                        "the instance's --max-num-seqs)"
                    )
                raise CheckFailed(f"{sel}: never above 0 in {polls} polls during the load{hint}")
            return f"{sel}: peak {value_text(peak)} during the load ({polls} polls)"
        if exp.kind == "present":
            n = len(outcome.after.matching(exp.name, exp.labels))
            return f"{sel}: {n} series"
        if exp.kind == "all_one":
            series = outcome.after.matching(exp.name, exp.labels)
            low = sorted(selector("", dict(sorted(s.labels.items()))) for s in series
                         if s.value != 1)
            if low:
                raise CheckFailed(f"{sel}: not 1 after the load: {', '.join(low[:10])}")
            return f"{sel}: all {len(series)} series read 1"
        raise CheckFailed(f"{sel}: expectation {exp.kind} has no /metrics side")

    return check


def _known(instances: set[str]) -> str:
    known = sorted(instances)
    if not known:
        return "nothing"
    shown = ", ".join(known[:10])
    return f"{shown}, ... ({len(known)} in all)" if len(known) > 10 else shown


class UpProbe(Probe):
    """up{job, instance} == 1, from `up{job=...}` (one query for every target of the job).

    While the target has no `up` series at all, it waits PROMETHEUS_DISCOVERY_S longer:
    Prometheus may not have applied a just-reloaded scrape config yet.
    """

    def __init__(self, name: str, target: str, job: str, instance: str, deadline: float) -> None:
        super().__init__(name, target, deadline)
        self.job = job
        self.instance = instance
        self.expr = selector("up", {"job": job, "instance": instance})  # what the detail shows
        self.seen = False
        self.extended = False

    def query(self) -> str:
        return selector("up", {"job": self.job})

    def attempt(self, result: list[Series]) -> tuple[bool, str]:
        mine = instance_series(result, self.instance)
        if not mine:
            return False, f"{self.expr} has no data"
        self.seen = True
        value = min(s.value for s in mine)
        return value == 1, f"{self.expr} = {value_text(value)}"

    def extend(self) -> bool:
        if self.seen or self.extended:
            return False
        self.extended = True
        self.deadline += defaults.PROMETHEUS_DISCOVERY_S
        return True

    def failure(self, detail: str, result: list[Series] | None) -> str:
        if result is None:  # Prometheus itself failed
            return detail
        if not self.seen:
            known = _known({s.labels.get("instance", "?") for s in result})
            return (
                f"{detail}: Prometheus does not scrape {self.instance} in job {self.job!r} "
                f"(it scrapes {known} there; scrape config out of date?)"
            )
        return f"{detail}: Prometheus cannot scrape it (see its /targets page)"


class _SignalProbe(Probe):
    """One expectation of templates/signals.yml for one instance, through Prometheus."""

    def __init__(
        self,
        name: str,
        worker: Worker,
        exp: MetricExpectation,
        job: str,
        deadline: float,
    ) -> None:
        super().__init__(name, worker.label, deadline)
        self.exp = exp
        self.instance = worker.instance
        # What the detail shows: the per-instance query (equal to this instance's element
        # of the batched `... by (instance)` one).
        self.sel = selector(exp.name, {"job": job, "instance": worker.instance, **exp.labels})
        self.batch_sel = selector(exp.name, {"job": job, **exp.labels})

    def value(self, result: list[Series]) -> float | None:
        mine = instance_series(result, self.instance)
        return mine[0].value if mine else None


class CounterProbe(_SignalProbe):
    """sum(counter) in Prometheus == the instance's /metrics after the load."""

    def __init__(
        self,
        name: str,
        worker: Worker,
        exp: MetricExpectation,
        job: str,
        deadline: float,
        want: float | None,
        lower_bound: bool = False,
    ) -> None:
        super().__init__(name, worker, exp, job, deadline)
        self.want = want
        self.lower_bound = lower_bound  # other traffic: it may only have grown since

    def query(self) -> str:
        return f"sum by (instance) ({self.batch_sel})"

    def attempt(self, result: list[Series]) -> tuple[bool, str]:
        expr = f"sum({self.sel})"
        value = self.value(result)
        if value is None:
            if self.want is None:
                return True, f"{expr} has no data (absent in /metrics too)"
            return False, f"{expr} has no data"
        detail = f"{expr} = {value_text(value)}"
        if self.lower_bound and self.want is not None and value >= self.want - 1e-9:
            return True, f"{detail} >= /metrics after the load (other traffic: a lower bound)"
        if self.want is not None and math.isclose(value, self.want, abs_tol=1e-9):
            return True, f"{detail} = /metrics after the load"
        return False, detail

    def failure(self, detail: str, result: list[Series] | None) -> str:
        want = "absent" if self.want is None else value_text(self.want)
        return f"{detail}, but /metrics shows {want} after the load"


class GaugeProbe(_SignalProbe):
    """max_over_time(gauge[load window]) > 0: Prometheus scraped it above 0 during the load."""

    def __init__(
        self,
        name: str,
        worker: Worker,
        exp: MetricExpectation,
        job: str,
        deadline: float,
        load_started_at: float,
        poll_s: float,
    ) -> None:
        super().__init__(name, worker, exp, job, deadline)
        self.load_started_at = load_started_at
        self.poll_s = poll_s
        self.window = ""

    def query(self) -> str:
        self.window = prom_duration(time.time() - self.load_started_at + self.poll_s + 1)
        return f"max by (instance) (max_over_time({self.batch_sel}[{self.window}]))"

    def attempt(self, result: list[Series]) -> tuple[bool, str]:
        value = self.value(result)
        shown = "no data" if value is None else value_text(value)
        detail = f"max(max_over_time({self.sel}[{self.window}])) = {shown}"
        return value is not None and value > 0, detail

    def failure(self, detail: str, result: list[Series] | None) -> str:
        if result is None:
            return detail
        return f"{detail}: Prometheus never scraped it above 0 during the load"


class PresentProbe(_SignalProbe):
    """count(series) > 0."""

    note = ""

    def query(self) -> str:
        return f"count by (instance) ({self.batch_sel})"

    def attempt(self, result: list[Series]) -> tuple[bool, str]:
        value = self.value(result)
        n = int(value) if value is not None else 0
        return n > 0, f"count({self.sel}) = {n}{self.note}"

    def failure(self, detail: str, result: list[Series] | None) -> str:
        if result is None:
            return detail
        return f"{detail}: series missing in Prometheus"


class AllOneProbe(_SignalProbe):
    """min(gauge) == 1: every series reads 1 (every worker ready in the gateway's view)."""

    def query(self) -> str:
        return f"min by (instance) ({self.batch_sel})"

    def attempt(self, result: list[Series]) -> tuple[bool, str]:
        value = self.value(result)
        shown = "no data" if value is None else value_text(value)
        return value == 1, f"min({self.sel}) = {shown}"

    def failure(self, detail: str, result: list[Series] | None) -> str:
        if result is None:
            return detail
        return f"{detail}: not every series reads 1 in Prometheus"


def signal_probe(
    name: str,
    exp: MetricExpectation,
    worker: Worker,
    job: str,
    outcome: LoadOutcome,
    deadline: float,
    poll_s: float,
    elsewhere: str = "",
) -> Probe:
    """The Prometheus side of one expectation for one instance."""
    if exp.kind == "up":
        return UpProbe(name, worker.label, job, worker.instance, deadline)
    if exp.kind == "counter_delta":
        want = outcome.after.sum(exp.name, exp.labels)
        busy = outcome.result.other_traffic is not None
        return CounterProbe(name, worker, exp, job, deadline, want, busy)
    if exp.kind == "gauge_seen_above_zero" and not outcome.probe:
        present = PresentProbe(name, worker, exp, job, deadline)
        present.note = f" (not a queue probe; {elsewhere})"
        return present
    if exp.kind == "gauge_seen_above_zero":
        return GaugeProbe(name, worker, exp, job, deadline, outcome.result.started_at, poll_s)
    if exp.kind == "present":
        return PresentProbe(name, worker, exp, job, deadline)
    if exp.kind == "all_one":
        return AllOneProbe(name, worker, exp, job, deadline)
    raise ValueError(f"expectation {exp.kind} has no Prometheus side")
