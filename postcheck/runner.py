"""The order of the post-check: workers and Prometheus targets, the load, signals, dashboards.

Independent checks run concurrently; a check that fails never stops the others. A check
that cannot apply because an earlier one failed is listed as skipped, naming that check.
Every instance is loaded at the same time; the Prometheus checks of all instances are
polled together, one query per expression shape a round (prometheus.poll_probes).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import resource
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from postcheck import defaults
from postcheck.alertmanager import watchdog_check
from postcheck.capacity import from_inventory, queue_margin
from postcheck.dashboards import (
    Dashboard,
    PanelQuery,
    load_dashboards,
    panel_queries,
    repeat_source,
    substitute,
    variable_values,
)
from postcheck.fleet import Fleet, Worker
from postcheck.grafana import GrafanaAccess, describe, grafana_checks
from postcheck.load import (
    LoadContext,
    LoadOutcome,
    LoadPlan,
    LoadTarget,
    SocketBudget,
    load_instance,
)
from postcheck.prefix_cache import check_prefix_cache
from postcheck.prometheus import Probe, Prometheus, poll, poll_probes
from postcheck.queuewatch import PrometheusQueueWatch
from postcheck.report import CheckFailed, Reporter
from postcheck.signal_checks import UpProbe, metrics_check, signal_probe
from postcheck.signals import MetricExpectation, SignalSet
from postcheck.vllm_metrics import VersionPlan
from postcheck.worker_checks import MAX_TOKENS as SINGLE_COMPLETION_TOKENS
from postcheck.worker_checks import FamiliesExpectation, WorkerState, check_worker

MAX_THREADS = defaults.CHECK_THREADS


@dataclass(frozen=True)
class Options:
    requests: int  # completions per instance, at least
    concurrency: int | None  # queue probes' requests in flight; None: capacity + margin
    invalid: int
    max_tokens: int
    timeout_s: float  # one request of the checks before and after the load
    load_seconds: float | None  # minimum load duration; None: no minimum
    vllm_job: str
    node_job: str
    dashboards_dir: Path
    signals: SignalSet
    versions: VersionPlan | None = None  # None: no metrics.families check
    grafana: GrafanaAccess = field(default_factory=lambda: GrafanaAccess(url=None))
    queue_probe: str = defaults.QUEUE_PROBE  # all | per-model | N | model:NAME,...
    load_deadline_s: float | None = None  # None: from the scrape interval
    traffic_window_s: float = defaults.TRAFFIC_WINDOW_S
    load_timeout_s: float | None = None  # one load request; None: from measurement
    gateway_signals: SignalSet | None = None  # None: no load through the gateways
    gateway_job: str = defaults.GATEWAY_JOB


def _parallel(jobs: list[Callable[[], Any]], max_threads: int = MAX_THREADS) -> list[Any]:
    """Run jobs concurrently, return their results in order."""
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(max_threads, len(jobs)))) as pool:
        futures: list[Future[Any]] = [pool.submit(job) for job in jobs]
        return [f.result() for f in futures]


class Run:
    def __init__(self, fleet: Fleet, options: Options, reporter: Reporter) -> None:
        self.fleet = fleet
        self.opt = options
        self.rep = reporter
        self.check_timeout_s = options.timeout_s
        self.prom = (
            Prometheus(fleet.prometheus_url, self.check_timeout_s, fleet.prometheus_auth)
            if fleet.prometheus_url
            else None
        )
        self.prom_down: str | None = None if self.prom else fleet.prometheus_missing_reason
        interval = fleet.scrape_interval_s
        self.poll_s = min(1.0, max(0.1, interval / 4))
        self.slack_s = min(defaults.PROMETHEUS_SLACK_S, interval)
        self.load_seconds = options.load_seconds or 0.0
        self.load_deadline_s = options.load_deadline_s or load_deadline(interval)
        self.probes: dict[str, str] = {}  # model -> the instances that prove its queue
        self.watches: dict[str, PrometheusQueueWatch] = {}  # by check: load, gateway.load
        self.loads: dict[str, dict[str, object]] = {}
        self.gateway_loads: dict[str, dict[str, object]] = {}
        self.versions: dict[str, str | None] = {}

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

    def poll(self, probes: list[Probe]) -> None:
        """Poll Prometheus for many checks at once (one query per expression shape a round)."""
        assert self.prom is not None

        def record(probe: Probe, ok: bool, detail: str, seconds: float) -> None:
            self.rep.record(probe.name, probe.target, "pass" if ok else "fail", detail, seconds)

        poll_probes(self.prom, probes, record, self.poll_s)

    def families_for(self, worker: Worker) -> FamiliesExpectation | None:
        plan = self.opt.versions
        if plan is None:
            return None
        pinned = plan.pinned_for(worker.vllm_version)
        return FamiliesExpectation(pinned, plan.required[pinned])

    # phase 1 -------------------------------------------------------------------------
    def phase_targets(self) -> list[WorkerState]:
        # The Prometheus and Grafana jobs first: they must not queue behind hundreds of
        # instances' own checks (the up probes' deadline runs from now).
        jobs: list[Callable[[], Any]] = []
        targets = [(self.opt.vllm_job, w.instance) for w in self.fleet.workers]
        targets += [(self.opt.node_job, n) for n in self.fleet.node_targets]
        if self.prom is not None and self.prom_down is None:
            deadline = self.prometheus_deadline()
            probes: list[Probe] = [
                UpProbe("prometheus.up", f"{job}/{instance}", job, instance, deadline)
                for job, instance in targets
            ]
            jobs.append(partial(self.poll, probes))
        else:
            self.rep.skip("prometheus.up", f"{len(targets)} targets", f"{self.prom_down}")
        jobs.append(
            partial(
                grafana_checks,
                self.opt.grafana,
                self.opt.dashboards_dir,
                self.rep,
                self.check_timeout_s,
            )
        )
        jobs += [
            partial(check_worker, w, self.rep, self.check_timeout_s, self.families_for(w))
            for w in self.fleet.workers
        ]
        results = _parallel(jobs)
        states = [r for r in results if isinstance(r, WorkerState)]
        self.versions = {st.worker.label: st.version for st in states}
        return states

    # phase 2 -------------------------------------------------------------------------
    def plan_for(self, state: WorkerState, probe: bool, n_probes: int) -> LoadPlan:
        """The load of one instance: a queue probe exceeds its capacity, the others only
        move the counters (as many in flight as it runs at once, so nothing waits)."""
        w, opt = state.worker, self.opt
        ramp = 0
        if not probe:
            in_flight = min(defaults.COUNTER_IN_FLIGHT, w.capacity or defaults.COUNTER_IN_FLIGHT)
        elif opt.concurrency:
            in_flight = opt.concurrency
        elif w.capacity:
            in_flight = w.capacity + queue_margin(w.capacity)
            if not from_inventory(w.capacity_source):
                ramp = max(defaults.RAMP_MAX_IN_FLIGHT, in_flight)
        else:
            in_flight, ramp = defaults.RAMP_START_IN_FLIGHT, defaults.RAMP_MAX_IN_FLIGHT
        one = state.completion_s or 1.0
        timeout = opt.load_timeout_s or request_timeout(
            one, opt.max_tokens, in_flight, w.capacity or in_flight, self.load_deadline_s
        )
        return LoadPlan(
            completions=opt.requests,
            invalid=opt.invalid,
            in_flight=in_flight,
            max_tokens=opt.max_tokens,
            timeout_s=timeout,
            probe=probe,
            max_in_flight=ramp,
            ramp_s=max(1.0, 2 * one, 4 * self.poll_s),
            min_seconds=self.load_seconds,
            # Polls of /metrics cost the controller CPU: fewer per instance on big fleets.
            poll_interval_s=max(defaults.POLL_INTERVAL_S, 0.01 * n_probes),
            traffic_window_s=opt.traffic_window_s,
        )

    def phase_prefix_cache(self, states: list[WorkerState]) -> None:
        """The prefix-cache probe of every instance (postcheck/prefix_cache.py), before the
        load: nothing else may move its counters meanwhile."""
        jobs: list[Callable[[], Any]] = []
        for st in states:
            label = st.worker.label
            if not (st.completion_ok and st.model):
                self.rep.skip("prefix_cache", label, "no completion answered (see its checks)")
                continue
            check = partial(check_prefix_cache, st.worker, st.model, self.check_timeout_s)
            jobs.append(partial(self.rep.run, "prefix_cache", label, check))
        _parallel(jobs)

    def phase_load(self, states: list[WorkerState]) -> dict[str, LoadOutcome]:
        loadable = []
        for state in states:
            if state.not_loadable or state.model is None:
                reason = state.not_loadable or "no model name known (see models)"
                self.rep.skip("load", state.worker.label, f"not loaded: {reason}")
            else:
                loadable.append(state)
        chosen = select_probes(self.opt.queue_probe, loadable)
        for state in loadable:
            if state.worker.label in chosen:
                self.probes.setdefault(str(state.model), "")
                self.probes[str(state.model)] += ("," if self.probes[str(state.model)] else "")
                self.probes[str(state.model)] += state.worker.label
        targets = [
            LoadTarget(
                s.worker, str(s.model), self.plan_for(s, s.worker.label in chosen, len(chosen))
            )
            for s in loadable
        ]
        return self.run_loads(
            targets, self.opt.signals, self.opt.vllm_job, "load", self.loads, self.probes_text
        )

    def run_loads(
        self,
        targets: list[LoadTarget],
        signals: SignalSet,
        job: str,
        check: str,
        store: dict[str, dict[str, object]],
        proven_on: Callable[[], str],
    ) -> dict[str, LoadOutcome]:
        """Load the targets at once; each one's verdict is the check `check`, its figures go
        into `store` (the JSON report); `proven_on()` names where the queue is proven, for
        the targets that only move counters."""
        sigs = signals.signals
        counters = [m for s in sigs for m in s.metrics if m.kind == "counter_delta"]
        gauges = sorted(
            {m.name for s in sigs for m in s.metrics if m.kind == "gauge_seen_above_zero"}
        )
        keep = {m.name for s in sigs for m in s.metrics if m.kind in ("present", "all_one")}
        prom_ok = self.prom is not None and self.prom_down is None
        watch = None
        if prom_ok and gauges and any(t.plan.probe for t in targets):
            assert self.prom is not None
            watch = self.watches[check] = PrometheusQueueWatch(self.prom, job, gauges, self.poll_s)
        return asyncio.run(
            self.loads_async(targets, counters, gauges, keep, watch, check, store, proven_on)
        )

    async def loads_async(
        self,
        targets: list[LoadTarget],
        counters: list[MetricExpectation],
        gauges: list[str],
        keep: set[str],
        watch: PrometheusQueueWatch | None,
        check: str,
        store: dict[str, dict[str, object]],
        proven_on: Callable[[], str],
    ) -> dict[str, LoadOutcome]:
        """Every target at once, within the open-files budget (beyond it, loads wait)."""
        outcomes: dict[str, LoadOutcome] = {}
        deadline = time.monotonic() + self.load_deadline_s
        budget = SocketBudget(_open_files_budget())
        ctx = LoadContext(counters, gauges, keep, deadline, watch, budget)
        stop = asyncio.Event()
        watcher = asyncio.ensure_future(watch.run(stop)) if watch else None

        async def one(t: LoadTarget) -> None:
            start = time.monotonic()
            label = t.worker.label
            info: dict[str, object] = {
                "queue_probe": t.plan.probe,
                "capacity": t.worker.capacity,
                "capacity_source": t.worker.capacity_source,
                "timeout_s": round(t.plan.timeout_s, 3),
            }
            try:
                outcome = await load_instance(t, ctx)
            except CheckFailed as exc:
                store[label] = info
                self.rep.record(check, label, "fail", str(exc), time.monotonic() - start)
                return
            except Exception as exc:  # a bug or an odd answer: this check fails, not the run
                detail = f"unexpected {type(exc).__name__}: {exc}"
                self.rep.record(check, label, "fail", detail, time.monotonic() - start)
                return
            outcomes[label] = outcome
            r = outcome.result
            store[label] = {**info, **r.as_json()}
            role = f"queue probe, capacity {t.worker.capacity_source}" if t.plan.probe else (
                f"counters only (queue proven on {proven_on()})"
            )
            detail = f"{role}; timeout {t.plan.timeout_s:.1f}s/request; {r.summary()}"
            if t.plan.probe and r.proven_after_s is None and not r.errors:
                detail += f"; queue NOT proven within the {self.load_deadline_s:g}s deadline"
            if r.errors:
                listed = "; ".join(f"{n}x {text}" for text, n in r.errors.most_common(3))
                self.rep.record(check, label, "fail", f"{detail}; failures: {listed}", r.seconds)
            else:
                self.rep.record(check, label, "pass", detail, r.seconds)

        try:
            await asyncio.gather(*(one(t) for t in targets))
        finally:
            stop.set()
            if watcher is not None:
                await watcher
        return outcomes

    def probes_text(self) -> str:
        return "; ".join(f"{m}: {labels}" for m, labels in sorted(self.probes.items())) or "none"

    # phase 3 -------------------------------------------------------------------------
    def phase_signals(self, states: list[WorkerState], outcomes: dict[str, LoadOutcome]) -> None:
        elsewhere = f"--queue-probe {self.opt.queue_probe}: proven on {self.probes_text()}"
        workers = [s.worker for s in states]
        self.check_signals(workers, outcomes, self.opt.signals, self.opt.vllm_job, "", elsewhere)

    def check_signals(
        self,
        workers: list[Worker],
        outcomes: dict[str, LoadOutcome],
        signals: SignalSet,
        job: str,
        prefix: str,
        elsewhere: str,
    ) -> None:
        """Every expectation of `signals` for every loaded worker: on its /metrics, then
        through Prometheus (job `job`), all polled together. Check names start with prefix."""
        deadline = self.prometheus_deadline()
        prom_ok = self.prom is not None and self.prom_down is None
        probes: list[Probe] = []
        for w in workers:
            outcome = outcomes.get(w.label)
            if outcome is None:
                self.rep.skip(
                    f"{prefix}signals", w.label, "not loaded (see load): signals not checked"
                )
                continue
            for sig in signals.signals:
                for exp in sig.metrics:
                    if exp.kind != "up":  # /metrics: already read, nothing to wait for
                        name = f"{prefix}metrics.{sig.id}:{exp.selector}"
                        self.rep.run(name, w.label, metrics_check(exp, outcome, elsewhere))
                    if prom_ok:
                        name = f"{prefix}prometheus.{sig.id}:{exp.selector}"
                        probes.append(
                            signal_probe(
                                name, exp, w, job, outcome, deadline, self.poll_s, elsewhere
                            )
                        )
            if not prom_ok:
                self.rep.skip(f"{prefix}prometheus.signals", w.label, f"{self.prom_down}")
        if probes:
            self.poll(probes)

    # phase 3b ------------------------------------------------------------------------
    def phase_gateways(self, states: list[WorkerState]) -> None:
        """A load through each gateway (templates/gateway-signals.yml), after the workers'
        own: the workers' counters are settled by now, the gateway's move alone. One pool of
        every gateway at a time (a round); the first pool of each is its queue probe."""
        gateways = self.fleet.gateways
        signals = self.opt.gateway_signals
        if not gateways or signals is None:
            return
        one_s: dict[str, float] = {}  # model -> its slowest single completion
        for st in states:
            if st.model is not None and st.completion_s:
                one_s[str(st.model)] = max(one_s.get(str(st.model), 0.0), st.completion_s)
        for k in range(max(len(g.pools) for g in gateways)):
            targets = []
            for g in gateways:
                if k >= len(g.pools):
                    continue
                pool = g.pools[k]
                worker = g.as_worker(pool)
                if k == 0:
                    in_flight = pool.capacity + min(queue_margin(pool.capacity), pool.queue_size)
                else:
                    in_flight = min(defaults.COUNTER_IN_FLIGHT, pool.capacity)
                timeout = self.opt.load_timeout_s or request_timeout(
                    one_s.get(pool.model, 1.0), self.opt.max_tokens, in_flight, pool.capacity,
                    self.load_deadline_s,
                )
                plan = LoadPlan(
                    completions=self.opt.requests,
                    invalid=self.opt.invalid,
                    in_flight=in_flight,
                    max_tokens=self.opt.max_tokens,
                    timeout_s=timeout,
                    probe=k == 0,
                    min_seconds=self.load_seconds,
                    poll_interval_s=defaults.POLL_INTERVAL_S,
                    traffic_window_s=self.opt.traffic_window_s,
                )
                targets.append(LoadTarget(worker, pool.model, plan))
            job = self.opt.gateway_job
            outcomes = self.run_loads(
                targets, signals, job, "gateway.load", self.gateway_loads,
                lambda: "the gateway's first pool",
            )
            elsewhere = "the queue is proven on the first pool of each gateway"
            workers = [t.worker for t in targets]
            self.check_signals(workers, outcomes, signals, job, "gateway.", elsewhere)

    # phase 4 -------------------------------------------------------------------------
    def phase_rules(self) -> None:
        """Rule groups loaded and evaluating without errors; firing alerts reported."""
        if self.prom is None:
            for name in ("prometheus.rules", "prometheus.alerts", "alertmanager.watchdog"):
                self.rep.skip(name, "-", f"{self.prom_down}")
            return
        prom = self.prom

        def rules() -> str:
            groups = prom.data("/api/v1/rules").get("groups") or []
            broken = [
                f"{g.get('name')}/{r.get('name')}: {r.get('lastError') or r.get('health')}"
                for g in groups
                for r in g.get("rules") or []
                if r.get("health") not in ("ok", "unknown")
            ]
            if broken:
                raise CheckFailed("rules failing to evaluate: " + "; ".join(broken[:10]))
            count = sum(len(g.get("rules") or []) for g in groups)
            return f"{len(groups)} rule groups, {count} rules loaded, none failing"

        def alerts() -> str:
            firing = [
                a for a in prom.data("/api/v1/alerts").get("alerts") or []
                if a.get("state") == "firing"
            ]
            # Reported, not judged: an alert can fire for reasons outside this fleet's proof.
            if not firing:
                return "no alert firing"
            names = sorted(
                f"{a['labels'].get('alertname')}"
                f"{'{' + a['labels']['instance'] + '}' if 'instance' in a['labels'] else ''}"
                for a in firing
            )
            return f"{len(firing)} firing: " + ", ".join(names[:20])

        self.rep.run("prometheus.rules", prom.base_url, rules)
        self.rep.run("prometheus.alerts", prom.base_url, alerts)
        # Dead man's switch. Alerts sent before Prometheus discovered its Alertmanagers are
        # sent again a minute later (its --rules.alert.resend-delay): wait that long for it.
        wait_s = 60 + 2 * self.fleet.scrape_interval_s + self.slack_s
        self.rep.run("alertmanager.watchdog", prom.base_url,
                     watchdog_check(prom, self.check_timeout_s, wait_s))

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
            gateway_dashboard = Path(dash.file).stem == defaults.GRAFANA_GATEWAY_DASHBOARD
            if gateway_dashboard and not self.fleet.gateways:
                why = f"n/a: no host in group {defaults.GATEWAYS_GROUP} (nothing exposes gateway_*)"
                for q in panel_queries(dash)[0]:
                    self.rep.skip("dashboard", f"{q.dashboard} > {q.title} [{q.ref_id}]", why)
                continue
            values = variable_values(
                dash.data,
                job=self.opt.vllm_job,
                node_job=self.opt.node_job,
                scrape_interval_s=self.fleet.scrape_interval_s,
                range_s=max(60.0, time.time() - load_started),
            )
            queries, skipped = panel_queries(dash)
            for na in skipped:
                self.rep.skip("dashboard", f"{na.dashboard} > {na.title}", f"n/a: {na.reason}")
            empty = self.empty_repeats(prom, dash, {q.repeat for q in queries if q.repeat})
            for q in queries:
                if q.repeat in empty:
                    target = f"{q.dashboard} > {q.title} [{q.ref_id}]"
                    self.rep.skip("dashboard", target, f"n/a: {empty[q.repeat]}")
                    continue
                check = partial(self.dashboard_query, prom, q, values, deadline)
                target = f"{q.dashboard} > {q.title} [{q.ref_id}]"
                jobs.append(partial(self.rep.run, "dashboard", target, check))
        _parallel(jobs)

    @staticmethod
    def empty_repeats(prom: Prometheus, dash: Dashboard, variables: set[str]) -> dict[str, str]:
        """Repeat variables without values, and why: Grafana then shows no such panel (the
        SLO rows of a fleet without SLOs)."""
        empty: dict[str, str] = {}
        for var in sorted(variables):
            source = repeat_source(dash.data, var)
            if source is None:
                continue
            selector, label = source
            try:
                values = prom.query(f"count by ({label}) ({selector})")
            except CheckFailed:
                continue  # its panels' own queries then fail, saying why
            if not values:
                empty[var] = f"repeats over ${var}: label_values({selector}, {label}) is empty"
        return empty

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


def load_deadline(scrape_interval_s: float) -> float:
    """The whole load's default deadline: time for Prometheus to scrape the queue a few
    times over, even just after a restart."""
    return defaults.LOAD_DEADLINE_MIN_S + defaults.LOAD_DEADLINE_SCRAPES * scrape_interval_s


def request_timeout(
    one_s: float, max_tokens: int, in_flight: int, capacity: int, cap_s: float
) -> float:
    """One load request's timeout from the measured single completion: scaled to the load's
    tokens, times the rounds a request at the back of the queue waits plus its own, times
    how much slower a full batch decodes; at least the floor, at most the load deadline."""
    service = one_s * max(1.0, max_tokens / SINGLE_COMPLETION_TOKENS)
    rounds = math.ceil(in_flight / max(1, capacity)) + 1
    timeout = service * rounds * defaults.FULL_BATCH_SLOWDOWN
    return min(cap_s, max(defaults.REQUEST_TIMEOUT_FLOOR_S, timeout))


def select_probes(spec: str, states: list[WorkerState]) -> set[str]:
    """The instances whose queue the load fills (labels); the others move counters only."""
    by_model: dict[str, list[str]] = {}
    for st in states:
        by_model.setdefault(str(st.model), []).append(st.worker.label)
    if spec == "all":
        return {label for labels in by_model.values() for label in labels}
    if spec == "per-model":
        return {labels[0] for labels in by_model.values()}
    if spec.startswith("model:"):
        names = [n.strip() for n in spec[len("model:") :].split(",") if n.strip()]
        return {by_model[n][0] for n in names if n in by_model}
    count = int(spec)  # N: one per model in turn (canaries first), until N
    chosen: list[str] = []
    depth = 0
    while len(chosen) < count and any(len(v) > depth for v in by_model.values()):
        chosen += [v[depth] for v in by_model.values() if len(v) > depth][: count - len(chosen)]
        depth += 1
    return set(chosen)


def _open_files_budget() -> int:
    """Sockets the loads may hold: the open-files limit, less a reserve for everything else."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(0, soft - 128 - 2 * MAX_THREADS)


def raise_open_files_limit() -> None:
    """Soft limit up to the hard one: a large fleet under load needs thousands of sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and soft != resource.RLIM_INFINITY:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(fleet: Fleet, options: Options, reporter: Reporter) -> dict[str, Any]:
    """Run every check; returns what the JSON summary adds to the counts."""
    started = time.time()
    r = Run(fleet, options, reporter)
    r.check_prometheus()
    states = r.phase_targets()
    r.phase_prefix_cache(states)
    load_started = time.time()
    outcomes = r.phase_load(states)
    r.phase_signals(states, outcomes)
    r.phase_gateways(states)
    r.phase_rules()
    r.phase_dashboards(load_started)
    return {
        "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "duration": round(time.time() - started, 3),
        "source": fleet.source,
        "prometheus": fleet.prometheus_url,
        "scrape_interval_s": fleet.scrape_interval_s,
        "workers": [w.label for w in fleet.workers],
        "vllm_version": {
            "pinned": options.versions.default if options.versions else None,
            "pinned_from": options.versions.source if options.versions else None,
            "instances": r.versions,
        },
        "grafana": describe(options.grafana),
        "load": {
            "completions_per_instance": options.requests,
            "invalid_per_instance": options.invalid,
            "concurrency": options.concurrency,
            "max_tokens": options.max_tokens,
            "min_seconds": r.load_seconds,
            "deadline_s": r.load_deadline_s,
            "queue_probe": options.queue_probe,
            "queue_probes": r.probes,
            "traffic_window_s": options.traffic_window_s,
            "prometheus_queue_watch": (
                {"queries": w.queries, "errors": dict(w.errors)}
                if (w := r.watches.get("load"))
                else None
            ),
            "other_traffic": sorted(
                label for label, info in r.loads.items() if info.get("other_traffic")
            ),
            "instances": r.loads,
        },
        "gateways": {
            "job": options.gateway_job,
            "hosts": [g.label for g in fleet.gateways],
            "loads": r.gateway_loads,
        },
    }
