"""The whole stack on the lab: site.yml on fresh hosts, idempotence, the post-check.

Real everything: systemd hosts, SSH, vLLM's CPU build serving the tiny model, Debian's
Prometheus and node_exporter. Only Grafana's server is absent (not installable here): its
provisioning files are checked on the host.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import ansible_runner
import pytest
from ansible_runner import Runner

from postcheck.signals import load_signals
from postcheck.vllm_metrics import load_families

from .conftest import BIN, LAB_INVENTORY, ROOT, VLLM, playbook, run, tool_env, wait_vllm_serving

# The demo lab's tests run in order on one test worker (Makefile: --dist loadgroup).
pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("demo-lab")]

# Every vLLM instance of inventory/lab, as the post-check names them.
LAB_INSTANCES = ("lab-worker1/tiny", "lab-worker1/tiny-b")
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def recap(output: str) -> dict[str, dict[str, int]]:
    return {m[1]: {"ok": int(m[2]), "changed": int(m[3]), "unreachable": int(m[4]),
                   "failed": int(m[5])} for m in RECAP.finditer(output)}


def postcheck(report: Path) -> tuple[int, dict[str, object]]:
    proc = run([str(BIN / "postcheck"), "--inventory", str(LAB_INVENTORY), "--json", str(report)],
               check=False)
    return proc.returncode, json.loads(report.read_text())


def test_check_diff_on_fresh_hosts_fails_nowhere_and_changes_nothing(
    lab: dict[str, object],
) -> None:
    """`--check --diff` before the first converge: what ops run to preview a new fleet."""
    proc = playbook("site.yml", "--check", "--diff", check=False)
    hosts = recap(proc.stdout)
    failed = {n: h for n, h in hosts.items() if h["failed"] or h["unreachable"]}
    errors = [line for line in proc.stdout.splitlines() if "[ERROR]" in line or "fatal:" in line]
    assert proc.returncode == 0 and not failed, f"--check --diff failed on {failed}: {errors}"
    assert {"lab-worker1", "lab-mon1", "localhost"} <= hosts.keys(), proc.stdout[-3000:]
    assert hosts["lab-worker1"]["changed"] > 0, "--check previewed no change on a fresh host"
    assert "+ExecStart=" in proc.stdout  # the diff shows the unit it would write
    left = run([str(BIN / "ansible"), "-i", str(LAB_INVENTORY), "all", "-m",
                "ansible.builtin.shell", "-a",
                "ls /etc/systemd/system/vllm-tiny.service /etc/prometheus/prometheus.yml "
                "/etc/grafana/grafana.ini 2>/dev/null; true"]).stdout
    assert "/etc/" not in left, f"--check wrote files: {left}"


def test_site_converges_on_fresh_hosts(lab: dict[str, object], tmp_path: Path) -> None:
    proc = playbook("site.yml", "-e", f"postcheck_report={tmp_path / 'first.json'}")
    hosts = recap(proc.stdout)
    assert {"lab-worker1", "lab-mon1", "localhost"} <= hosts.keys()
    assert all(h["failed"] == 0 and h["unreachable"] == 0 for h in hosts.values())
    assert "server package are NOT installed" in " ".join(proc.stdout.split())  # said, not hidden


def runner_site(private: Path, vault_password: str, vaulted_vars: dict[str, str]) -> Runner:
    """site.yml through ansible-runner as AWX runs it: this repository as the project, the lab's
    inventory, a vault-encrypted vars file opened with env/passwords answering the prompt."""
    private.mkdir()
    plain = private / "vault.yml"
    plain.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in vaulted_vars.items()))
    (private / "vault-pass").write_text(vault_password)
    run([str(BIN / "ansible-vault"), "encrypt", "--vault-password-file",
         str(private / "vault-pass"), str(plain)])
    (private / "vault-pass").unlink()  # from here on only env/passwords knows it
    assert plain.read_text().startswith("$ANSIBLE_VAULT;")
    env = tool_env()
    return ansible_runner.run(
        private_data_dir=str(private), project_dir=str(ROOT), playbook="site.yml",
        inventory=str(LAB_INVENTORY), ident="site", quiet=True,
        cmdline=f"--ask-vault-pass -e @{plain}",
        passwords={r"^Vault password:\s*?$": vault_password},
        envvars={k: env[k] for k in ("PATH", "ANSIBLE_CONFIG", "ANSIBLE_FORCE_COLOR")},
    )


def test_second_run_changes_nothing(lab: dict[str, object], tmp_path: Path) -> None:
    """Through ansible-runner, as AWX runs it: no task changed in its job events, none in its
    stats (the play recap). One second run: ansible-playbook's own is the same engine."""
    artifacts = tmp_path / "runner" / "artifacts" / "site"
    start = time.monotonic()
    r = runner_site(tmp_path / "runner", "lab-vault-pw-" + os.urandom(6).hex(),
                    {"postcheck_report": str(artifacts / "postcheck-report.json")})
    runner_s = time.monotonic() - start
    events = list(r.events)
    oks = [e["event_data"] for e in events if e["event"] == "runner_on_ok"]
    bad = [e["event_data"].get("task") for e in events
           if e["event"] in ("runner_on_failed", "runner_on_unreachable")
           and not e["event_data"].get("ignore_errors")]
    assert r.status == "successful" and r.rc == 0 and bad == [], (r.status, r.rc, bad)
    assert {"lab-worker1", "lab-mon1", "localhost"} <= {e["host"] for e in oks}
    changed = [f"{e['host']}: {e['task']}" for e in oks if e.get("res", {}).get("changed")]
    assert changed == [], f"second run changed something: {changed}"
    assert r.stats is not None and not r.stats.get("changed"), r.stats
    # The vaulted postcheck_report was decrypted and used: the reports are in the artifacts.
    report = json.loads((artifacts / "postcheck-report.json").read_text())
    assert report["summary"]["failed"] == 0
    html = artifacts / "postcheck-report.html"
    assert "uPlot" in html.read_text()
    print(f"post-check report in the runner's artifacts: {html} ({html.stat().st_size} bytes); "
          f"second site.yml run through ansible-runner: {runner_s:.1f} s")


def test_postcheck_passes_with_the_six_signals(lab: dict[str, object], tmp_path: Path) -> None:
    rc, report = postcheck(tmp_path / "report.json")
    checks = report["checks"]
    assert isinstance(checks, list)
    failed = [c for c in checks if c["status"] == "fail"]
    assert rc == 0 and not failed, f"post-check failed: {failed}"
    # Each of the design's six signals, every expectation of templates/signals.yml, passed
    # for every vLLM instance of the lab: on its /metrics and through Prometheus.
    signals = load_signals(ROOT / "templates" / "signals.yml")
    assert {s.id for s in signals.signals} == {"queue_depth", "queue_wait_time", "request_latency",
                                               "in_flight", "worker_state", "errors"}
    passed = {(c["name"], c["target"]) for c in checks if c["status"] == "pass"}
    missing = [
        (f"{where}.{sig.id}:{exp.selector}", instance)
        for sig in signals.signals for exp in sig.metrics
        for where in ("metrics", "prometheus") if not (where == "metrics" and exp.kind == "up")
        for instance in LAB_INSTANCES
        if (f"{where}.{sig.id}:{exp.selector}", instance) not in passed
    ]
    assert not missing, f"signal checks that did not pass: {missing}"


def test_capture_from_the_real_lab_vllm_matches_the_committed_families(
    lab: dict[str, object], tmp_path: Path
) -> None:
    """make capture-vllm-metrics against the lab's real vLLM: the committed list that the
    upgrade guard checks every dashboard and rule against is what the pinned release serves."""
    run([str(BIN / "python"), str(ROOT / "lab" / "capture_vllm_metrics.py"),
         "--url", VLLM, "--output-dir", str(tmp_path)])
    [captured_file] = tmp_path.glob("*.txt")
    version = captured_file.stem
    committed_file = ROOT / "templates" / "vllm-metrics" / f"{version}.txt"
    assert committed_file.exists(), f"the lab serves vLLM {version}: no {committed_file}"
    captured = load_families(tmp_path, version)
    committed = load_families(committed_file.parent, version)
    assert {n: f.type for n, f in captured.items()} == {n: f.type for n, f in committed.items()}


# As inventory/lab has it: its SLO names the served model, checked before the instances.
TINY = {"name": "tiny", "port": 8000, "model": "/srv/models/tiny-llama",
        "served_model_name": "tiny-llama"}
# What only the lab shows: the real site.yml on real hosts stops in its preflight, with every
# host unchanged, for a refusal of each kind (an argument-spec type error; each role's own
# checks; checks that read the real host). One case each: every refusal's wording is checked
# in tests/unit, the argument specs then the role's tasks/validate.yml with the lab's options
# (check_validate_cases in tests/unit/conftest.py; test_vllm_validate.py,
# test_prometheus_rules.py, test_grafana_role.py, test_alertmanager_validate.py,
# test_nvidia_driver_decisions.py, test_nvidia_gpu_exporter_validate.py, test_vllm_install.py,
# test_node_exporter_role.py). A new bad-input case goes there, not here (each case here is
# a site.yml run of 10-12 s).
BAD_INPUTS = [
    # The argument specs (validate_argument_spec), before any role's own checks.
    ("instances not a list", {"vllm_instances": "tiny"},
     "option 'vllm_instances' is of type str"),
    # vllm: its own checks; then one reading the worker's file system.
    ("instance name", {"vllm_instances": [{**TINY, "name": "Bad_Name"}]},
     "vllm_instances[0].name=Bad_Name"),
    ("bad model path", {"vllm_instances": [{**TINY, "model": "/srv/models/nope"}]},
     "model=/srv/models/nope: no such folder"),
    # prometheus, against the lab's 5 s scrape interval (inventory/lab).
    ("scrape timeout over interval", {"prometheus_scrape_timeout": "10s"},
     "prometheus_scrape_timeout=10s is longer than prometheus_scrape_interval=5s"),
    # grafana on the monitoring host: the worker stops too.
    ("default Grafana password", {"grafana_admin_password": "admin"},
     "or the user name: it must be set (from a vault)"),
    # alertmanager: the monitoring host's real address (ansible_host).
    ("alertmanager: cluster peers without this host",
     {"alertmanager_cluster_peers": ["10.231.0.98:9094", "10.231.0.99:9094"]},
     "this host's 10.231.0.11:9094"),
    # gateway: on the gateway host (lab-gw1); the worker and the monitoring host stop too.
    ("gateway queue size 0", {"gateway_queue_size": 0}, "gateway_queue_size=0 (1 or more"),
    # nvidia_driver: the worker's PCI bus (no NVSwitch).
    ("fabric manager forced without NVSwitch", {"nvidia_driver_fabricmanager": True},
     "nvidia_driver_fabricmanager=True on lab-worker1, which has no NVSwitch"),
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


# vllm GPU path (#13): a stand-in interpreter on the worker that reports Python 3.10 (what
# Ubuntu 22.04's python3 is), and a stand-in /etc/os-release of Ubuntu 22.04 for vllm_python
# auto. The lab is Debian 12 (python3 3.11): without them nothing here is too old.
PY310_STUB = "/usr/local/bin/python3-stub"
JAMMY_OS_RELEASE = "/root/os-release-jammy"
PYTHON_TOO_OLD = [
    ("explicit", {"vllm_python": PY310_STUB},
     f"vllm_python={PY310_STUB} on lab-worker1 is Python 3.10.12; vLLM 0.32.0 needs Python"
     " >=3.11,<3.15"),
    # Debian 12 has a /usr/bin/python3.11 (its python3), which auto would take: jammy's
    # python3.11 stands in at a path the lab host lacks, as on a jammy host before provisioning.
    ("auto without provisioning",
     {"vllm_python_provision": False, "__vllm_python_system": PY310_STUB,
      "__vllm_os_release": JAMMY_OS_RELEASE,
      "__vllm_python_packages": {"ubuntu-22.04": {"python": "/usr/local/bin/python3.11-absent",
                                                 "packages": ["python3.11", "python3.11-venv"]}}},
     f"lab-worker1 (ubuntu 22.04) has Python 3.10.12 at {PY310_STUB}; vLLM 0.32.0 needs Python"
     " >=3.11,<3.15 (Requires-Python of its wheel), and vllm_python=auto finds none."
     " vllm_python_provision=false: set it to true to install python3.11 python3.11-venv"),
]


@pytest.mark.parametrize(("case", "extra", "message"), PYTHON_TOO_OLD,
                         ids=[c[0] for c in PYTHON_TOO_OLD])
def test_python_too_old_is_refused_before_any_host_changes(
    lab: dict[str, object], tmp_path: Path, case: str, extra: dict[str, object], message: str
) -> None:
    def on_worker(module: str, args: str) -> None:
        run([str(BIN / "ansible"), "-i", str(LAB_INVENTORY), "lab-worker1", "-m", module,
             "-a", args])

    on_worker("ansible.builtin.copy", f"dest={PY310_STUB} mode=0755 "
              "content='#!/bin/sh\necho 3.10.12\n'")
    on_worker("ansible.builtin.copy", f"dest={JAMMY_OS_RELEASE} mode=0644 "
              "content='ID=ubuntu\nVERSION_ID=\"22.04\"\n'")
    try:
        extra_file = tmp_path / "extra.json"
        extra_file.write_text(json.dumps(extra))
        proc = playbook("site.yml", "-e", f"@{extra_file}", check=False)
        output = " ".join((proc.stdout + proc.stderr).split())
        assert proc.returncode != 0, f"{case}: accepted"
        assert message in output, f"{case}: the error does not say {message!r}"
        hosts = recap(proc.stdout)
        assert hosts and all(h["changed"] == 0 for h in hosts.values()), f"{case}: a host changed"
        assert "Check the inventory before any host changes" in output
    finally:
        on_worker("ansible.builtin.file", f"path={PY310_STUB} state=absent")
        on_worker("ansible.builtin.file", f"path={JAMMY_OS_RELEASE} state=absent")


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
        wait_vllm_serving("vllm-tiny serving again", timeout=240)
