"""The whole stack on the lab: site.yml on fresh hosts, idempotence, the post-check.

Real everything: systemd hosts, SSH, vLLM's CPU build serving the tiny model, Debian's
Prometheus and node_exporter. Only Grafana's server is absent (not installable here): its
provisioning files are checked on the host.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .conftest import BIN, LAB_INVENTORY, playbook, run

pytestmark = pytest.mark.lab

RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def recap(output: str) -> dict[str, dict[str, int]]:
    return {m[1]: {"ok": int(m[2]), "changed": int(m[3]), "unreachable": int(m[4]),
                   "failed": int(m[5])} for m in RECAP.finditer(output)}


def postcheck(report: Path) -> tuple[int, dict[str, object]]:
    proc = run([str(BIN / "postcheck"), "--inventory", str(LAB_INVENTORY), "--json", str(report)],
               check=False)
    return proc.returncode, json.loads(report.read_text())


def test_site_converges_on_fresh_hosts(lab: dict[str, object], tmp_path: Path) -> None:
    proc = playbook("site.yml", "-e", f"postcheck_report={tmp_path / 'first.json'}")
    hosts = recap(proc.stdout)
    assert {"lab-worker1", "lab-mon1", "localhost"} <= hosts.keys()
    assert all(h["failed"] == 0 and h["unreachable"] == 0 for h in hosts.values())
    assert "server package are NOT installed" in " ".join(proc.stdout.split())  # said, not hidden


def test_second_run_changes_nothing(lab: dict[str, object], tmp_path: Path) -> None:
    proc = playbook("site.yml", "-e", f"postcheck_report={tmp_path / 'second.json'}")
    hosts = recap(proc.stdout)
    assert hosts, "no PLAY RECAP in the output"
    changed = {name: h["changed"] for name, h in hosts.items() if h["changed"]}
    assert changed == {}, f"second run changed something: {changed}"


def test_postcheck_passes_with_the_six_signals(lab: dict[str, object], tmp_path: Path) -> None:
    rc, report = postcheck(tmp_path / "report.json")
    checks = report["checks"]
    assert isinstance(checks, list)
    failed = [c for c in checks if c["status"] == "fail"]
    assert rc == 0 and not failed, f"post-check failed: {failed}"
    names = " ".join(str(c["name"]) for c in checks)
    for signal in ("queue_depth", "queue_wait_time", "request_latency", "in_flight",
                   "worker_state", "errors"):
        assert signal in names, f"no check for the design signal {signal}"


TINY = {"name": "tiny", "port": 8000, "model": "/srv/models/tiny-llama"}
BAD_INPUTS = [
    ("instance name", {"vllm_instances": [{**TINY, "name": "Bad_Name"}]},
     "vllm_instances[0].name=Bad_Name"),
    ("port not a number", {"vllm_instances": [{**TINY, "port": "eighty"}]}, "port"),
    ("port of node_exporter", {"vllm_instances": [{**TINY, "port": 9100}]},
     "(tiny).port=9100"),
    ("port out of range", {"vllm_instances": [{**TINY, "port": 70000}]}, "(tiny).port=70000"),
    ("clashing ports", {"vllm_instances": [TINY, {**TINY, "name": "tiny-b"}]},
     "ports [8000, 8000]"),
    ("duplicate names", {"vllm_instances": [TINY, {**TINY, "port": 8001}]},
     "names ['tiny', 'tiny']"),
    ("missing model", {"vllm_instances": [{"name": "tiny", "port": 8000}]}, "model"),
    ("bad model path", {"vllm_instances": [{**TINY, "model": "/srv/models/nope"}]},
     "model=/srv/models/nope: no such folder"),
    ("disable-log-stats", {"vllm_instances": [{**TINY, "args": {"disable-log-stats": True}}]},
     "disable-log-stats"),
    ("api key on the command line", {"vllm_instances": [{**TINY, "args": {"api-key": "x"}}]},
     "api-key"),
    ("unknown device", {"vllm_device": "tpu"}, "vllm_device"),
    ("misspelled instance key", {"vllm_instances": [{**TINY, "prot": 8001}]}, "prot"),
    ("gpus not integers", {"vllm_instances": [{**TINY, "gpus": ["a"]}]}, "gpus"),
    ("engine args not a mapping", {"vllm_engine_args": "--max-num-seqs 4"}, "vllm_engine_args"),
    ("default Grafana password", {"grafana_admin_password": "admin"}, "grafana_admin_password"),
    ("scrape interval", {"prometheus_scrape_interval": "fast"}, "prometheus_scrape_interval=fast"),
    ("node_exporter address", {"node_exporter_web_listen_address": "9100"},
     "node_exporter_web_listen_address=9100"),
]


@pytest.mark.parametrize(("case", "extra", "message"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_refused_before_any_host_changes(
    lab: dict[str, object], tmp_path: Path, case: str, extra: dict[str, object], message: str
) -> None:
    extra_file = tmp_path / "extra.json"
    extra_file.write_text(json.dumps(extra))
    proc = playbook("site.yml", "-e", f"@{extra_file}", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"{case}: accepted"
    assert message in output, f"{case}: the error does not name {message!r}"
    hosts = recap(proc.stdout)
    assert hosts and all(h["changed"] == 0 for h in hosts.values()), f"{case}: a host changed"
    assert "Preflight" in output or "Check the inventory before any host changes" in output


def test_grafana_provisioning_files_are_written(lab: dict[str, object]) -> None:
    proc = run([str(BIN / "ansible"), "-i", str(LAB_INVENTORY), "monitoring", "-m",
                "ansible.builtin.command",
                "-a", "cat /etc/grafana/provisioning/datasources/prometheus.yml"])
    assert "uid: prometheus" in proc.stdout
    assert "timeInterval: 5s" in proc.stdout  # the lab's scrape interval


def test_postcheck_fails_naming_a_stopped_worker(lab: dict[str, object], tmp_path: Path) -> None:
    run([str(BIN / "ansible"), "-i", str(LAB_INVENTORY), "gpu_workers", "-m",
         "ansible.builtin.systemd_service", "-a", "name=vllm-tiny state=stopped"])
    try:
        rc, report = postcheck(tmp_path / "stopped.json")
        assert rc == 1
        checks = report["checks"]
        assert isinstance(checks, list)
        failed = [c for c in checks if c["status"] == "fail"]
        assert failed, "a stopped worker went unnoticed"
        assert any("lab-worker1" in str(c["target"]) or "10.231.0.10" in str(c["target"])
                   for c in failed), failed
    finally:
        run([str(BIN / "ansible"), "-i", str(LAB_INVENTORY), "gpu_workers", "-m",
             "ansible.builtin.systemd_service", "-a", "name=vllm-tiny state=started"])
