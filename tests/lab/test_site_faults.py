"""Faults on the converged demo lab: what breaks in production, done for real on lab hosts.

`kill -9` of vLLM, a Prometheus restart, ops edits that break the scrape configuration or a
rule file, the monitoring host unreachable, and a reboot of each host. Runs after
test_site.py on the same lab (site.yml converged there); alone, it converges first.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import (
    BIN,
    HOSTS,
    LAB_INVENTORY,
    MONITOR,
    PROMETHEUS,
    SERVICES,
    SSH,
    WORKER,
    http,
    playbook,
    prometheus_ready,
    run,
    ssh,
    vllm_serving,
    vllm_state,
    wait_for,
    wait_vllm_serving,
)

# The demo lab's tests run in order on one test worker (Makefile: --dist loadgroup).
pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("demo-lab")]

# The files Prometheus runs with: an ops edit it rejects must leave every one untouched.
# kill -9 to serving again is a speed figure: bench-vllm measures it (kill9_to_serving_s). Here
# vLLM must come back by itself, within the lab's readiness budget (vllm_ready_timeout 180 s).
KILL9_BACK_WITHIN_S = 180
CONFIG_SUMS = "find /etc/prometheus -type f -exec sha256sum {} + | sort -k 2"


def query(expr: str, at: float | None = None) -> list[dict[str, object]]:
    params: dict[str, str | float] = {"query": expr}
    if at is not None:
        params["time"] = at
    body = http().get(f"{PROMETHEUS}/api/v1/query", params=params, timeout=10).json()
    assert body["status"] == "success", body
    result = body["data"]["result"]
    assert isinstance(result, list)
    return result


def by_labels(result: list[dict[str, object]]) -> list[dict[str, object]]:
    return sorted(result, key=lambda r: json.dumps(r["metric"], sort_keys=True))


def samples(expr: str) -> list[tuple[float, float]]:
    """The raw samples of a range selector (one series), oldest first."""
    result = query(expr)
    assert len(result) == 1, result
    values = result[0]["values"]
    assert isinstance(values, list)
    return [(float(t), float(v)) for t, v in values]


def postcheck(report: Path) -> tuple[int, dict[str, object], str]:
    proc = run([str(BIN / "postcheck"), "--inventory", str(LAB_INVENTORY), "--json",
                str(report)], check=False)
    return proc.returncode, json.loads(report.read_text()), proc.stdout


def assert_postcheck_passes(tmp_path: Path, name: str) -> None:
    rc, report, _ = postcheck(tmp_path / f"{name}.json")
    checks = report["checks"]
    assert isinstance(checks, list)
    failed = [c for c in checks if c["status"] == "fail"]
    assert rc == 0 and not failed, f"post-check after {name}: {failed}"


def boot_id(address: str) -> str:
    return ssh(address, "cat /proc/sys/kernel/random/boot_id")


def reboot(address: str) -> float:
    """Reboot a lab host (its own `systemctl reboot`); seconds until it accepts SSH again."""
    before = boot_id(address)
    start = time.monotonic()
    subprocess.run(["timeout", "20", *SSH, f"root@{address}", "systemctl reboot"],
                   check=False, capture_output=True)

    def rebooted() -> bool:
        try:
            now = ssh(address, "cat /proc/sys/kernel/random/boot_id", check=False, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return now not in ("", before)

    wait_for(f"{address} back from reboot", rebooted, timeout=120, every=1)
    return time.monotonic() - start


def active(address: str, units: list[str]) -> dict[str, str]:
    out = ssh(address, "systemctl is-active " + " ".join(units), check=False)
    return dict(zip(units, out.split(), strict=False))


def config_state() -> tuple[str, str]:
    """Checksums of Prometheus's files and the configuration it runs (from its API)."""
    sums = ssh(MONITOR, CONFIG_SUMS)
    running = http().get(f"{PROMETHEUS}/api/v1/status/config", timeout=10).json()["data"]["yaml"]
    return sums, running


@pytest.fixture(autouse=True)
def healthy(converged: dict[str, object]) -> None:
    """Each fault starts from a serving fleet."""
    wait_vllm_serving("vllm-tiny serving", timeout=180)
    wait_for("Prometheus ready", prometheus_ready, timeout=60)


def test_kill9_of_vllm_restarts_it_and_prometheus_sees_down_then_up() -> None:
    pid = ssh(WORKER, "systemctl show -p MainPID --value vllm-tiny")
    restarts = int(ssh(WORKER, "systemctl show -p NRestarts --value vllm-tiny"))
    assert pid.isdigit() and pid != "0"
    killed_at = time.time()
    start = time.monotonic()
    ssh(WORKER, f"kill -9 {pid}")
    wait_for("the killed vLLM's port closed", lambda: not vllm_serving(), timeout=30, every=0.2)
    back = wait_for("vllm-tiny serving again after kill -9", vllm_serving,
                    timeout=KILL9_BACK_WITHIN_S, every=0.5, explain=vllm_state)
    print(f"kill -9 to serving again: {time.monotonic() - start:.1f} s "
          f"(port closed to serving {back:.1f} s)")
    assert ssh(WORKER, "systemctl show -p MainPID --value vllm-tiny") not in (pid, "0")
    assert int(ssh(WORKER, "systemctl show -p NRestarts --value vllm-tiny")) == restarts + 1

    # Prometheus (5 s scrapes in the lab) recorded the instance down, then up again.
    expr = 'up{job="vllm",vllm_instance="tiny"}[%ds]'

    def seen_back() -> bool:
        window = int(time.time() - killed_at) + 10
        points = samples(expr % window)
        return bool(points) and points[-1][1] == 1 and points[-1][0] > killed_at + 5
    wait_for("Prometheus scraping vLLM again", seen_back, timeout=60, every=1)
    points = samples(expr % (int(time.time() - killed_at) + 10))
    after = [v for t, v in points if t >= killed_at]
    print(f"up{{job=vllm}} since the kill: {after}")
    assert 0.0 in after, f"Prometheus never saw vLLM down: {points}"
    assert after[-1] == 1.0 and after.index(0.0) < len(after) - 1


def test_prometheus_restart_keeps_the_series_recorded_before() -> None:
    at = time.time() - 20
    before = query('up{job="node"}[1m]', at=at)
    count_before = query("count(up)", at=at)
    assert before and count_before
    ssh(MONITOR, "systemctl restart prometheus")
    wait_for("Prometheus ready after restart", prometheus_ready, timeout=90)
    after = query('up{job="node"}[1m]', at=at)
    assert by_labels(after) == by_labels(before), "samples lost in the restart"
    assert query("count(up)", at=at) == count_before


def broken_run(tmp_path: Path, extra: dict[str, object]) -> str:
    """An ops edit Prometheus must refuse, pushed as ops push a config change: site.yml limited
    to the monitoring hosts and Prometheus's configure phase (the preflight runs with any tag)."""
    sums, running = config_state()
    extra_file = tmp_path / "extra.json"
    extra_file.write_text(json.dumps(extra))
    proc = playbook("site.yml", "--limit", "monitoring", "--tags", "prometheus_configure",
                    "-e", f"@{extra_file}", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, "the broken edit was accepted"
    sums_after, running_after = config_state()
    changed = set(sums_after.splitlines()) ^ set(sums.splitlines())
    assert not changed, f"files of Prometheus changed: {sorted(changed)}"
    assert running_after == running, "the configuration Prometheus runs changed"
    assert prometheus_ready()
    return output


def test_a_broken_scrape_config_is_refused_and_prometheus_keeps_running(tmp_path: Path) -> None:
    broken = {"job_name": "broken", "scrape_interval": "often",
              "static_configs": [{"targets": [f"{WORKER}:9100"]}]}
    output = broken_run(tmp_path, {"prometheus_extra_scrape_configs": [broken]})
    assert "prometheus.yml" in output, "the failure does not name prometheus.yml"
    assert "often" in output, "promtool's reason is not shown"
    targets = http().get(f"{PROMETHEUS}/api/v1/targets", timeout=10).json()["data"]
    assert all(t["labels"]["job"] != "broken" for t in targets["activeTargets"])


def test_a_broken_rule_file_is_refused_and_prometheus_keeps_running(tmp_path: Path) -> None:
    groups = [{"name": "broken", "rules": [{"record": "job:broken:sum", "expr": "sum(up"}]}]
    output = broken_run(tmp_path, {"prometheus_extra_rule_groups": groups})
    assert "/etc/prometheus/rules/extra.yml" in output, "the failure does not name the rule file"
    assert ssh(MONITOR, "test -e /etc/prometheus/rules/extra.yml || echo absent") == "absent"
    rules = http().get(f"{PROMETHEUS}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert all(g["name"] != "broken" for g in rules)


def test_postcheck_reports_the_monitoring_host_down(tmp_path: Path) -> None:
    # The monitoring host drops off the network (its veth on the lab bridge goes down): to the
    # post-check it is a host that does not answer, exactly as a powered-off server.
    link = "vb-lab-mon1"
    subprocess.run(["ip", "link", "set", link, "down"], check=True)
    try:
        rc, report, stdout = postcheck(tmp_path / "mon-down.json")
    finally:
        subprocess.run(["ip", "link", "set", link, "up"], check=True)
    assert rc == 1
    checks = report["checks"]
    assert isinstance(checks, list)
    prom = [c for c in checks if c["name"] == "prometheus"]
    assert prom and prom[0]["status"] == "fail", prom
    detail = str(prom[0]["detail"])
    assert PROMETHEUS in detail and ("unreachable" in detail or "does not answer" in detail), detail
    assert f"FAIL  prometheus  {PROMETHEUS}" in stdout
    # The workers' own checks still ran and passed: only what needs Prometheus is missing.
    worker = [c for c in checks if c["name"] in ("health", "completion") and c["status"] == "pass"]
    assert worker, "the worker checks did not run"
    wait_for("Prometheus reachable again", prometheus_ready, timeout=60)


@pytest.mark.parametrize("host", HOSTS)
def test_reboot_brings_every_service_back_by_itself(tmp_path: Path, host: str) -> None:
    """Every lab host, every service the project put on it (conftest.SERVICES)."""
    address, units = HOSTS[host], list(SERVICES[host])
    at = time.time() - 20
    recorded = query('up{job="node"}[1m]', at=at)
    took = reboot(address)
    print(f"{host}: SSH again {took:.1f} s after reboot")
    wait_for(f"{host}: {units} active", lambda: set(active(address, units).values()) == {"active"},
             timeout=180, every=1)
    wait_vllm_serving("vllm-tiny serving", timeout=180)
    wait_for("Prometheus ready", prometheus_ready, timeout=90)
    assert by_labels(query('up{job="node"}[1m]', at=at)) == by_labels(recorded), \
        "series lost in the reboot"
    assert_postcheck_passes(tmp_path, f"reboot-{host}")
