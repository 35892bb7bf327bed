"""Production-shaped rows of `make bench-postcheck`: 50, 100 and 200 vLLM instances of 256
slots each, with GPU-like token rates (postcheck.testing.fakes.PRODUCTION_*), described by an
inventory as on a real fleet (vllm_engine_args max-num-seqs 256) and checked with NO load
flags: the default --queue-probe (per-model) and, for comparison, --queue-probe all (every
instance's queue filled: 200 x 260 requests in flight, within the open-files limit).

Each row: wall time, peak RSS and CPU of the post-check child, the requests its load sent
(all instances), and what one queue probe's load was (requests, seconds, when Prometheus had
seen its queue). Figures are printed and written to the JSON report, never asserted.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from postcheck_scale import (
    GRAFANA_PASSWORD,
    GRAFANA_USER,
    Fleet,
    postcheck_command,
    read_report,
    run_with_grafana,
)

from postcheck.testing.fakes import (
    PRODUCTION_PER_TOKEN_S,
    PRODUCTION_SLOTS,
    PRODUCTION_TTFT_S,
    FakeGrafana,
    FakePrometheus,
    HttpStateTarget,
)


@dataclass
class ProductionRow:
    workers: int
    slots: int
    queue_probe: str
    seconds: float
    peak_mib: float
    cpu_seconds: float
    requests_sent: int  # completions + invalid requests of the load, every instance
    probes: int  # instances whose queue was filled
    probe_requests: float  # mean requests one queue probe's load sent
    probe_seconds: float  # mean length of one queue probe's load
    probe_proven_s: float  # mean time until Prometheus had seen its queue
    max_in_flight: int
    checks: int
    failed: int
    exit_code: int
    loadavg_before: float  # the machine's load average: other work slows every figure
    failures: list[str]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--production-sizes",
        default="50,100,200",
        help="fleet sizes of the production-shaped rows (default %(default)s; empty: none)",
    )
    p.add_argument(
        "--production-probes",
        default="per-model",
        help="--queue-probe values of those rows (default %(default)s, no flag; `all` fills "
        "every queue: about 52,000 requests for 200 instances, more than fake servers on 2 "
        "shared cores answer in a minute)",
    )
    p.add_argument("--slots", type=int, default=PRODUCTION_SLOTS, help="max-num-seqs per instance")


def write_inventory(
    path: Path, ports: list[int], slots: int, prom_port: int, grafana_port: int, scrape: float
) -> Path:
    """A host per instance (its node_exporter: one shared fake target), as a fleet has it."""
    workers = {
        f"gpu{i}": {
            "ansible_host": "127.0.0.1",
            "vllm_device": "gpu",
            "vllm_engine_args": {"max-num-seqs": slots},
            "vllm_instances": [
                {"name": "main", "port": port, "model": "/srv/models/llama",
                 "served_model_name": "tiny"}
            ],
        }
        for i, port in enumerate(ports)
    }
    mon = {
        "ansible_host": "127.0.0.1",
        "prometheus_web_listen_address": f"0.0.0.0:{prom_port}",
        "prometheus_scrape_interval": f"{scrape:g}s",
        "grafana_http_port": grafana_port,
    }
    groups = {"gpu_workers": {"hosts": workers}, "monitoring": {"hosts": {"mon": mon}}}
    path.write_text(yaml.safe_dump({"all": {"children": groups}}, sort_keys=False))
    return path


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 2) if values else 0.0


def bench_production(size: int, probe: str, a: argparse.Namespace, workdir: Path) -> ProductionRow:
    fleet = Fleet(size, a.per_process, a.slots, PRODUCTION_TTFT_S, PRODUCTION_PER_TOKEN_S)
    prom = FakePrometheus(
        node_targets=["127.0.0.1:9100"],
        targets=[
            HttpStateTarget(f"127.0.0.1:{port}", interval_s=a.scrape_interval)
            for port in fleet.ports
        ],
        record_queries=False,
    )
    grafana = FakeGrafana(user=GRAFANA_USER, password=GRAFANA_PASSWORD)
    name = f"production-{size}-{probe}"
    report = workdir / f"{name}.json"
    try:
        prom.start()
        grafana.start()
        inv = write_inventory(
            workdir / f"{name}.yml", fleet.ports, a.slots, prom.port, grafana.port,
            a.scrape_interval,
        )
        argv = [*postcheck_command(a.postcheck_command), "-i", str(inv), "--json", str(report)]
        if probe != "per-model":  # the default: no flag at all
            argv += ["--queue-probe", probe]
        loadavg = os.getloadavg()[0]
        code, seconds, peak, cpu = run_with_grafana(argv, workdir / f"{name}.log")
    finally:
        grafana.stop()
        prom.stop()
        fleet.stop()
    data, failures = read_report(report)
    summary = data.get("summary", {})
    loads = list((summary.get("load") or {}).get("instances", {}).values())
    probes = [x for x in loads if x.get("queue_probe")]

    def sent(x: dict[str, Any]) -> int:
        return int(x.get("completions_sent", 0)) + int(x.get("invalid_sent", 0))

    return ProductionRow(
        workers=size,
        slots=a.slots,
        queue_probe=probe,
        seconds=round(seconds, 2),
        peak_mib=round(peak, 1),
        cpu_seconds=round(cpu, 2),
        requests_sent=sum(sent(x) for x in loads),
        probes=len(probes),
        probe_requests=_mean([sent(x) for x in probes]),
        probe_seconds=_mean([x.get("seconds", 0.0) for x in probes]),
        probe_proven_s=_mean([x["proven_after_s"] for x in probes if x.get("proven_after_s")]),
        max_in_flight=max([x.get("in_flight", 0) for x in loads] or [0]),
        checks=int(summary.get("total", 0)),
        failed=int(summary.get("failed", 0)),
        exit_code=code,
        loadavg_before=round(loadavg, 2),
        failures=failures[:10],
    )


def production_rows(a: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    """Run and print the production-shaped rows; their dicts for the JSON report."""
    sizes = [int(s) for s in a.production_sizes.split(",") if s.strip()]
    probes = [p.strip() for p in a.production_probes.split(",") if p.strip()]
    if not sizes or not probes:
        return []
    print(
        f"production-shaped: {a.slots} slots per instance (max-num-seqs in the inventory), "
        f"{PRODUCTION_TTFT_S:g}s prefill + {PRODUCTION_PER_TOKEN_S:g}s/token, default load "
        f"flags, scrape interval {a.scrape_interval:g}s",
        flush=True,
    )
    print(
        f"{'workers':>7}  {'probe':>9}  {'seconds':>7}  {'peak MiB':>8}  {'requests':>8}  "
        f"{'probes':>6}  {'in flight':>9}  {'probe req':>9}  {'probe s':>7}  {'failed':>6}",
        flush=True,
    )
    rows = []
    for size in sizes:
        for probe in probes:
            row = bench_production(size, probe, a, workdir)
            rows.append(asdict(row))
            print(
                f"{row.workers:>7}  {row.queue_probe:>9}  {row.seconds:>7.1f}  "
                f"{row.peak_mib:>8.1f}  {row.requests_sent:>8}  {row.probes:>6}  "
                f"{row.max_in_flight:>9}  {row.probe_requests:>9.0f}  {row.probe_seconds:>7.1f}  "
                f"{row.failed:>6}",
                flush=True,
            )
            for failure in row.failures:
                print(f"         FAIL {failure}", flush=True)
    return rows
