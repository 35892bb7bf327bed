"""Scale benchmark of the post-check: simulated fleets of 20, 50, 100, 200 vLLM workers.

    .venv/bin/python bench/postcheck_scale.py [--sizes 20,50,100,200] [--output FILE]
    make bench-postcheck

For each size it starts the fleet as local processes on 127.0.0.1 (postcheck.testing.aiofleet:
`--per-process` workers per process, one asyncio listener per port, real HTTP; each worker is
the unit tests' fake vLLM model: counters move with completions, gauges rise under load,
capacity plays --max-num-seqs), a fake Prometheus that reads every worker's state at most once
per scrape interval (so it lags like a real one) and a fake Grafana, then runs the real
post-check as a subprocess (explicit --worker targets, --prometheus, --grafana, a small load)
and measures its wall time and its peak RSS (ru_maxrss of that one child, from wait4).

It prints a table (workers, seconds, peak MiB, checks, passed, failed) and writes a JSON
report. It asserts nothing about timings: the figures depend on the machine and on what else
runs on it (the report records the load average before each run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from postcheck.testing.fakes import FakeGrafana, FakePrometheus, HttpStateTarget

GRAFANA_USER, GRAFANA_PASSWORD = "bench", "bench-grafana-password"


@dataclass
class Row:
    workers: int
    seconds: float
    peak_mib: float
    checks: int
    passed: int
    failed: int
    skipped: int
    exit_code: int
    cpu_seconds: float
    fleet_processes: int
    loadavg_before: float
    failures: list[str]


class Fleet:
    """`size` fake vLLM workers in ceil(size / per_process) processes."""

    def __init__(
        self, size: int, per_process: int, capacity: int, delay: float, per_token: float = 0.0
    ) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        left = size
        while left > 0:
            count = min(per_process, left)
            left -= count
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "postcheck.testing.aiofleet",
                        "--count",
                        str(count),
                        "--capacity",
                        str(capacity),
                        "--delay",
                        str(delay),
                        "--per-token",
                        str(per_token),
                        "--watch-stdin",
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            )
        for p in self.procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line:
                self.stop()
                raise SystemExit(f"a fleet process exited before listening (exit {p.wait()})")
            self.ports += json.loads(line)["ports"]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            for stream in (p.stdin, p.stdout):
                if stream is not None:
                    stream.close()


def postcheck_command(command: str | None) -> list[str]:
    if command:
        return shlex.split(command)
    beside = Path(sys.executable).parent / "postcheck"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "postcheck"]


def run_measured(
    argv: list[str], log: IO[bytes], env: dict[str, str]
) -> tuple[int, float, float, float]:
    """(exit code, wall seconds, peak RSS MiB, CPU seconds) of one child, from wait4."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    cpu = usage.ru_utime + usage.ru_stime
    return proc.returncode, seconds, usage.ru_maxrss / 1024, cpu  # ru_maxrss: KiB on Linux


def run_with_grafana(argv: list[str], log_path: Path) -> tuple[int, float, float, float]:
    """run_measured with the fake Grafana's credentials in the environment, output to a log."""
    env = {**os.environ, "GRAFANA_USER": GRAFANA_USER, "GRAFANA_PASSWORD": GRAFANA_PASSWORD}
    with open(log_path, "wb") as log:
        return run_measured(argv, log, env)


def read_report(report: Path) -> tuple[dict[str, Any], list[str]]:
    """A post-check's JSON report (empty if it wrote none) and its failures, one line each."""
    data: dict[str, Any] = json.loads(report.read_text()) if report.exists() else {}
    failures = [
        f"{c['name']} {c['target']}: {c['detail'][:160]}"
        for c in data.get("checks", [])
        if c["status"] == "fail"
    ]
    return data, failures


def bench_one(size: int, a: argparse.Namespace, workdir: Path) -> Row:
    fleet = Fleet(size, a.per_process, a.capacity, a.delay)
    # One node_exporter per fleet process (a "host"): always up, serving node_* names.
    nodes = [f"127.0.0.1:{9100 + i}" for i in range(len(fleet.procs))]
    prom = FakePrometheus(
        node_targets=nodes,
        targets=[
            HttpStateTarget(f"127.0.0.1:{port}", interval_s=a.scrape_interval)
            for port in fleet.ports
        ],
        record_queries=False,
    )
    grafana = FakeGrafana(user=GRAFANA_USER, password=GRAFANA_PASSWORD)
    try:
        prom.start()
        if a.grafana:
            grafana.start()
        report = workdir / f"report-{size}.json"
        argv = postcheck_command(a.postcheck_command)
        for port in fleet.ports:
            argv += ["--worker", f"http://127.0.0.1:{port},tiny"]
        for node in nodes:
            argv += ["--node-exporter", node]
        argv += [
            *("--prometheus", prom.url),
            *(("--grafana", grafana.url) if a.grafana else ()),
            *("--requests", str(a.requests), "--concurrency", str(a.concurrency)),
            *("--invalid", str(a.invalid), "--load-seconds", str(a.load_seconds)),
            *("--scrape-interval", f"{a.scrape_interval}s", "--timeout", str(a.timeout)),
            *("--json", str(report)),
        ]
        load_before = os.getloadavg()[0]
        code, seconds, peak, cpu = run_with_grafana(argv, workdir / f"postcheck-{size}.log")
    finally:
        grafana.stop()
        prom.stop()
        fleet.stop()
    data, failures = read_report(report)
    summary = data.get("summary", {})
    return Row(
        workers=size,
        seconds=round(seconds, 2),
        peak_mib=round(peak, 1),
        checks=int(summary.get("total", 0)),
        passed=int(summary.get("passed", 0)),
        failed=int(summary.get("failed", 0)),
        skipped=int(summary.get("skipped", 0)),
        exit_code=code,
        cpu_seconds=round(cpu, 2),
        fleet_processes=len(fleet.procs),
        loadavg_before=round(load_before, 2),
        failures=failures[:10],
    )


# The HTML report (postcheck --html) drawn again from a finished run's JSON, alone in a child:
# its own wall time and peak RSS, and the page's size.
HTML_CHILD = """
import json, sys, time
from postcheck import defaults
from postcheck.cli import build_parser, fleet_from_args
from postcheck.html_report import html_report
from postcheck.signals import load_signals
report, page, *argv = sys.argv[1:]
args = build_parser().parse_args(argv)
args.signals = load_signals(args.signals)
args.dashboards_dir, args.timeout_s = args.dashboards, args.timeout or defaults.TIMEOUT_S
with open(report) as fh:
    text = html_report(json.load(fh), fleet_from_args(args), args, time.time())
with open(page, "w") as fh:
    fh.write(text)
"""


def bench_html_report(size: int, a: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The page for `size` workers from a REAL Prometheus (Debian's) that scraped them during
    a post-check run: every panel's query_range over that window, as on a fleet."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        return {"workers": size, "skipped": "no prometheus binary (make setup installs it)"}
    fleet = Fleet(size, a.per_process, a.capacity, a.delay)
    targets = ", ".join(f"'127.0.0.1:{p}'" for p in fleet.ports)
    (workdir / "prometheus.yml").write_text(
        "global: {scrape_interval: 2s, scrape_timeout: 2s}\nscrape_configs:\n"
        f"  - job_name: vllm\n    static_configs:\n      - targets: [{targets}]\n"
        "        labels: {vllm_instance: main, model: tiny}\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prom = subprocess.Popen(
        [
            prometheus,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        time.sleep(3)  # ready and a few scrapes of the idle fleet: the baseline
        argv = [f"--worker=http://127.0.0.1:{p},tiny" for p in fleet.ports]
        argv += [
            *("--prometheus", url, "--scrape-interval", "2s", "--timeout", str(a.timeout)),
            *("--requests", str(a.requests), "--concurrency", str(a.concurrency)),
            *("--invalid", str(a.invalid), "--load-seconds", str(a.load_seconds)),
        ]
        report = workdir / f"html-run-{size}.json"
        with open(workdir / f"html-run-{size}.log", "wb") as log:
            run_measured(
                [*postcheck_command(None), *argv, "--json", str(report)], log, dict(os.environ)
            )
        page = workdir / f"report-{size}.html"
        with open(workdir / f"html-{size}.log", "wb") as log:
            code, seconds, peak, cpu = run_measured(
                [sys.executable, "-c", HTML_CHILD, str(report), str(page), *argv],
                log,
                dict(os.environ),
            )
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        fleet.stop()
    return {
        "workers": size,
        "exit_code": code,
        "seconds": round(seconds, 2),
        "peak_mib": round(peak, 1),
        "cpu_seconds": round(cpu, 2),
        "page_bytes": page.stat().st_size if page.exists() else 0,
    }


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="20,50,100,200", help="fleet sizes (default %(default)s)")
    p.add_argument("--per-process", type=int, default=50, help="workers per fleet process")
    p.add_argument("--requests", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--invalid", type=int, default=2)
    p.add_argument("--load-seconds", type=float, default=1.0)
    p.add_argument("--scrape-interval", type=float, default=1.0, help="fake Prometheus lag, s")
    p.add_argument("--timeout", type=float, default=15.0)
    p.add_argument("--capacity", type=int, default=2, help="each worker's --max-num-seqs")
    p.add_argument(
        "--delay",
        type=float,
        default=0.5,
        help="seconds one completion runs (default %(default)s: like the load's 32-token "
        "completions on a real server; much shorter ones make the fleet ask more requests "
        "per second of the one post-check process than 2 shared cores can send)",
    )
    p.add_argument(
        "--grafana",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run a fake Grafana and the Grafana checks (default: yes)",
    )
    p.add_argument(
        "--postcheck-command",
        metavar="CMD",
        help="run this instead of this checkout's postcheck (e.g. another version, to compare)",
    )
    p.add_argument("--keep", metavar="DIR", help="keep each run's post-check output and report")
    p.add_argument(
        "--html-workers",
        type=int,
        default=200,
        metavar="N",
        help="workers of the HTML report's run against a real Prometheus (0: none)",
    )
    p.add_argument("--output", default="bench-report.json", help="JSON report (%(default)s)")
    # Imported here: postcheck_production builds on this module's Fleet and run_with_grafana.
    from postcheck_production import add_arguments, production_rows

    add_arguments(p)
    a = p.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    if a.concurrency <= a.capacity:
        p.error("--concurrency must exceed --capacity, or requests never queue")
    raise_fd_limit()
    need = max(sizes) * (a.concurrency + 4) + 200
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < need:
        print(f"warning: open files limit {soft} < about {need} sockets this needs", flush=True)

    print(
        f"post-check scale benchmark: {os.cpu_count()} CPUs, load {a.requests} completions + "
        f"{a.invalid} invalid per wave at concurrency {a.concurrency} for {a.load_seconds:g}s, "
        f"scrape interval {a.scrape_interval:g}s, {a.per_process} workers per fleet process",
        flush=True,
    )
    header = f"{'workers':>7}  {'seconds':>7}  {'peak MiB':>8}  {'checks':>6}  {'passed':>6}  "
    header += f"{'failed':>6}"
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="postcheck-bench-") as tmp:
        workdir = Path(a.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for size in sizes:
            row = bench_one(size, a, workdir)
            rows.append(row)
            if len(rows) == 1:
                print(header, flush=True)
            print(
                f"{row.workers:>7}  {row.seconds:>7.1f}  {row.peak_mib:>8.1f}  {row.checks:>6}  "
                f"{row.passed:>6}  {row.failed:>6}",
                flush=True,
            )
            for failure in row.failures:
                print(f"         FAIL {failure}", flush=True)
        production = production_rows(a, workdir)
        html = bench_html_report(a.html_workers, a, workdir) if a.html_workers else {}
        if html:
            print(f"HTML report, {a.html_workers} workers, real Prometheus: {html}", flush=True)
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {k: v for k, v in vars(a).items() if k != "output"},
        "results": [asdict(r) for r in rows],
        "production": production,
        "html_report": html,
        "per_worker": [
            {
                "workers": r.workers,
                "ms_per_worker": round(1000 * r.seconds / r.workers, 1),
                "checks_per_worker": math.floor(r.checks / r.workers),
            }
            for r in rows
        ],
    }
    Path(a.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"report: {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
