"""The order of the post-check: workers and Prometheus targets, the load, signals, dashboards.

Independent checks run concurrently; a check that fails never stops the others. A check
that cannot apply because an earlier one failed is listed as skipped, naming that check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from postcheck import defaults
from postcheck.dashboards import (
    PanelQuery,
    load_dashboards,
    panel_queries,
    substitute,
    variable_values,
)
from postcheck.fleet import Fleet
from postcheck.load import LoadOutcome, LoadPlan, run_load
from postcheck.prometheus import Prometheus, poll
from postcheck.report import CheckFailed, Reporter
from postcheck.signal_checks import metrics_check, prometheus_check, up_check
from postcheck.signals import SignalSet
from postcheck.worker_checks import WorkerState, check_worker

MAX_THREADS = 32


@dataclass(frozen=True)
class Options:
    requests: int
    concurrency: int
    invalid: int
    max_tokens: int
    timeout_s: float
    load_seconds: float | None  # None: two scrape intervals
    vllm_job: str
    node_job: str
    dashboards_dir: Path
    signals: SignalSet


def _parallel(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Run jobs concurrently, return their results in order."""
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(jobs))) as pool:
        futures: list[Future[Any]] = [pool.submit(job) for job in jobs]
        return [f.result() for f in futures]


class Run:
    def __init__(self, fleet: Fleet, options: Options, reporter: Reporter) -> None:
        self.fleet = fleet
        self.opt = options
        self.rep = reporter
        self.prom = (
            Prometheus(fleet.prometheus_url, options.timeout_s) if fleet.prometheus_url else None
        )
        self.prom_down: str | None = None if self.prom else fleet.prometheus_missing_reason
        interval = fleet.scrape_interval_s
        self.poll_s = min(1.0, max(0.1, interval / 4))
        self.slack_s = min(defaults.PROMETHEUS_SLACK_S, interval)
        self.load_seconds = (
            options.load_seconds if options.load_seconds is not None else 2 * interval
        )
        self.loads: dict[str, dict[str, object]] = {}

    def prometheus_deadline(self) -> float:
        """Prometheus shows a new value within two scrape intervals (plus a little)."""
        return time.monotonic() + 2 * self.fleet.scrape_interval_s + self.slack_s

    # phase 0 -------------------------------------------------------------------------
    def check_prometheus(self) -> None:
        if self.prom is None:
            self.rep.skip("prometheus", "-", f"{self.prom_down}: every Prometheus check is skipped")
            return
        prom = self.prom

        def check() -> str:
            version = prom.build_version()
            interval = self.fleet.scrape_interval_s
            return f"Prometheus {version} at {prom.base_url}, scrape interval {interval:g}s"

        result = self.rep.run("prometheus", prom.base_url, check)
        if result.status != "pass":
            self.prom_down = "Prometheus not usable (see the prometheus check)"

    # phase 1 -------------------------------------------------------------------------
    def phase_targets(self) -> list[WorkerState]:
        jobs: list[Callable[[], Any]] = [
            partial(check_worker, w, self.rep, self.opt.timeout_s) for w in self.fleet.workers
        ]
        targets = [(self.opt.vllm_job, w.instance) for w in self.fleet.workers]
        targets += [(self.opt.node_job, n) for n in self.fleet.node_targets]
        if self.prom is not None and self.prom_down is None:
            prom, deadline = self.prom, self.prometheus_deadline()
            for job, instance in targets:
                check = up_check(prom, job, instance, deadline, self.poll_s)
                jobs.append(partial(self.rep.run, "prometheus.up", f"{job}/{instance}", check))
        else:
            self.rep.skip("prometheus.up", f"{len(targets)} targets", f"{self.prom_down}")
        results = _parallel(jobs)
        return [r for r in results if isinstance(r, WorkerState)]

    # phase 2 -------------------------------------------------------------------------
    def phase_load(self, states: list[WorkerState]) -> dict[str, LoadOutcome]:
        signals = self.opt.signals.signals
        counters = [m for s in signals for m in s.metrics if m.kind == "counter_delta"]
        gauges = sorted(
            {m.name for s in signals for m in s.metrics if m.kind == "gauge_seen_above_zero"}
        )
        plan = LoadPlan(
            requests=self.opt.requests,
            concurrency=self.opt.concurrency,
            invalid=self.opt.invalid,
            max_tokens=self.opt.max_tokens,
            min_seconds=self.load_seconds,
            timeout_s=self.opt.timeout_s,
        )
        outcomes: dict[str, LoadOutcome] = {}

        def load(state: WorkerState) -> None:
            w, model = state.worker, state.model
            if state.not_loadable or model is None:
                self.rep.skip("load", w.label, f"not loaded: {state.not_loadable}")
                return

            def check() -> str:
                outcome = run_load(w, model, plan, counters, gauges)
                outcomes[w.label] = outcome
                self.loads[w.label] = outcome.result.as_json()
                summary = outcome.result.summary()
                errors = outcome.result.errors
                if errors:
                    listed = "; ".join(f"{n}x {text}" for text, n in errors.most_common(3))
                    raise CheckFailed(f"{summary}; failures: {listed}")
                return summary

            self.rep.run("load", w.label, check)

        _parallel([partial(load, s) for s in states])
        return outcomes

    # phase 3 -------------------------------------------------------------------------
    def phase_signals(self, states: list[WorkerState], outcomes: dict[str, LoadOutcome]) -> None:
        jobs: list[Callable[[], Any]] = []
        deadline = self.prometheus_deadline()
        for state in states:
            w = state.worker
            outcome = outcomes.get(w.label)
            if outcome is None:
                self.rep.skip(
                    "signals", w.label, "instance was not loaded (see load): signals not checked"
                )
                continue
            for sig in self.opt.signals.signals:
                for exp in sig.metrics:
                    if exp.kind != "up":
                        check = metrics_check(exp, outcome)
                        jobs.append(
                            partial(
                                self.rep.run, f"metrics.{sig.id}:{exp.selector}", w.label, check
                            )
                        )
                    if self.prom is not None and self.prom_down is None:
                        check = prometheus_check(
                            exp, w, self.opt.vllm_job, self.prom, outcome, deadline, self.poll_s
                        )
                        name = f"prometheus.{sig.id}:{exp.selector}"
                        jobs.append(partial(self.rep.run, name, w.label, check))
            if self.prom is None or self.prom_down is not None:
                self.rep.skip("prometheus.signals", w.label, f"{self.prom_down}")
        _parallel(jobs)

    # phase 4 -------------------------------------------------------------------------
    def phase_dashboards(self, load_started: float) -> None:
        dashboards, broken = load_dashboards(self.opt.dashboards_dir)
        for file, error in broken:
            self.rep.record("dashboard", file, "fail", error, 0.0)
        if self.prom is None or self.prom_down is not None:
            self.rep.skip("dashboard", f"{len(dashboards)} dashboards", f"{self.prom_down}")
            return
        prom = self.prom
        deadline = time.monotonic() + self.fleet.scrape_interval_s + self.slack_s
        jobs: list[Callable[[], Any]] = []
        for dash in dashboards:
            values = variable_values(
                dash.data,
                job=self.opt.vllm_job,
                scrape_interval_s=self.fleet.scrape_interval_s,
                range_s=max(60.0, time.time() - load_started),
            )
            queries, skipped = panel_queries(dash)
            for na in skipped:
                self.rep.skip("dashboard", f"{na.dashboard} > {na.title}", f"n/a: {na.reason}")
            for q in queries:
                check = partial(self.dashboard_query, prom, q, values, deadline)
                target = f"{q.dashboard} > {q.title} [{q.ref_id}]"
                jobs.append(partial(self.rep.run, "dashboard", target, check))
        _parallel(jobs)

    def dashboard_query(
        self, prom: Prometheus, q: PanelQuery, values: dict[str, str], deadline: float
    ) -> str:
        try:
            expr = substitute(q.expr, values)
        except ValueError as exc:
            raise CheckFailed(f"{exc} in {q.expr}") from None

        def attempt() -> tuple[bool, str]:
            n = len(prom.query(expr))
            return n > 0, f"{n} series"

        ok, detail = poll(attempt, deadline, self.poll_s)
        if not ok:
            raise CheckFailed(f"no data for {expr}")
        return f"{detail}: {expr}"


def run(fleet: Fleet, options: Options, reporter: Reporter) -> dict[str, Any]:
    """Run every check; returns what the JSON summary adds to the counts."""
    started = time.time()
    r = Run(fleet, options, reporter)
    r.check_prometheus()
    states = r.phase_targets()
    load_started = time.time()
    outcomes = r.phase_load(states)
    r.phase_signals(states, outcomes)
    r.phase_dashboards(load_started)
    return {
        "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "duration": round(time.time() - started, 3),
        "source": fleet.source,
        "prometheus": fleet.prometheus_url,
        "scrape_interval_s": fleet.scrape_interval_s,
        "workers": [w.label for w in fleet.workers],
        "load": {
            "requests_per_wave": options.requests,
            "invalid_per_wave": options.invalid,
            "concurrency": options.concurrency,
            "min_seconds": r.load_seconds,
            "instances": r.loads,
        },
    }
