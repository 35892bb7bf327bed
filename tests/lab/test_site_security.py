"""Security of the converged demo lab: secrets stay secret, services run as their own users,
units are hardened. Runs after test_site.py on the same lab; alone, it converges first.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from .conftest import HOSTS, LAB_INVENTORY, MONITOR, SERVICES, WORKER, playbook, ssh
from .test_site import recap

# The demo lab's tests run in order on one test worker (Makefile: --dist loadgroup).
pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("demo-lab")]

SECRET_FILES = [Path("/var/lib/vllm-lab/grafana-admin-password"),
                Path("/var/lib/vllm-lab/grafana-secret-key")]
# The services of the project's components, as their unit names start (a new one on a lab
# host fails test_no_project_service_is_left_out until it is listed above).
PROJECT_UNITS = re.compile(r"^(vllm-|prometheus|alertmanager|grafana|nvidia|dcgm)")
# systemd-analyze security targets (issue #8): Debian ships these at 9.2 and 3.9.
EXPOSURE_MAX = {"vllm-tiny": 2.0, "vllm-tiny-b": 2.0, "prometheus": 1.5,
                "prometheus-node-exporter": 1.5, "prometheus-alertmanager": 1.5,
                "vllm-gateway": 1.5}


def test_every_lab_host_is_covered() -> None:
    inventory = yaml.safe_load((LAB_INVENTORY / "hosts.yml").read_text())
    hosts = {name: spec["ansible_host"] for group in inventory["all"]["children"].values()
             for name, spec in group["hosts"].items()}
    assert hosts == HOSTS and hosts.keys() == SERVICES.keys()


@pytest.mark.parametrize("host", HOSTS)
def test_no_project_service_is_left_out(converged: object, host: str) -> None:
    running = ssh(HOSTS[host], "systemctl list-units --type=service --state=running "
                               "--no-legend --plain").splitlines()
    units = {line.split()[0].removesuffix(".service") for line in running if line.strip()}
    project = {u for u in units if PROJECT_UNITS.match(u)}
    assert project == set(SERVICES[host]), f"{host}: running {sorted(project)}"


@pytest.fixture(scope="module")
def secrets(converged: dict[str, object]) -> list[str]:
    """The lab's Grafana admin password and secret key (the password lookup's files)."""
    found = [f.read_text().split()[0] for f in SECRET_FILES if f.exists()]
    assert len(found) == 2 and all(len(s) >= 12 for s in found)
    return found


def leaked(text: str, secrets: list[str]) -> list[str]:
    return [f"{s[:3]}... at offset {text.index(s)}" for s in secrets if s in text]


@pytest.mark.parametrize("host", HOSTS)
def test_no_secret_in_units_process_lists_or_journals(secrets: list[str], host: str) -> None:
    address = HOSTS[host]
    # The secrets go in on stdin: never on a command line, not even the test's.
    units = ssh(address, "grep -rlF -f - /etc/systemd/system /lib/systemd/system /etc/default"
                " || true", stdin="\n".join(secrets) + "\n")
    assert units == "", f"{host}: a secret is in {units}"
    assert not leaked(ssh(address, "ps -eo user,args"), secrets), f"{host}: a secret in ps"
    journal = ssh(address, "journalctl --no-pager -o cat", timeout=120)
    assert len(journal) > 1000, "the journal is empty: nothing was checked"
    assert not leaked(journal, secrets), f"{host}: a secret in the journal"


def test_no_secret_in_the_playbook_output(secrets: list[str], tmp_path: Path) -> None:
    # Whether the post-check passes is test_site.py's business: here every task's output is
    # read, the post-check play's (which hands Grafana's password to the post-check) included.
    proc = playbook("site.yml", "-v", "-e", f"postcheck_report={tmp_path / 'v.json'}",
                    check=False)
    hosts = recap(proc.stdout)
    assert all(hosts.get(h, {}).get("failed") == 0 for h in HOSTS), f"the run stopped: {hosts}"
    assert "Run the post-check against this inventory" in proc.stdout
    assert not leaked(proc.stdout + proc.stderr, secrets), "a secret in ansible-playbook -v"
    assert not leaked((tmp_path / "v.json").read_text(), secrets), "a secret in the report"


def test_secret_files_are_readable_by_their_service_only(secrets: list[str]) -> None:
    # grafana.ini holds the admin password and the secret key: root writes it, Grafana's group
    # reads it. The vLLM instances' secret environment files are read by systemd (root) only.
    assert ssh(MONITOR, "grep -cF -f - /etc/grafana/grafana.ini",
               stdin="\n".join(secrets) + "\n") == "2"
    files = {MONITOR: "/etc/grafana/grafana.ini", WORKER: "/etc/vllm/*.env /etc/vllm"}
    for address, paths in files.items():
        for line in ssh(address, f"stat -c '%n %U %G %a' {paths}").splitlines():
            name, user, group, mode = line.split()
            assert int(mode, 8) & 0o007 == 0, f"{name} is readable by everyone ({mode})"
            assert user == "root", f"{name} belongs to {user}: the service could rewrite it"
            if name.endswith(".ini"):
                assert group == "grafana" and int(mode, 8) & 0o020 == 0, line
            else:
                assert group == "root" and int(mode, 8) & 0o077 == 0, line


@pytest.mark.parametrize("host", HOSTS)
def test_every_service_runs_as_its_own_non_root_user(converged: object, host: str) -> None:
    address = HOSTS[host]
    processes = ssh(address, "ps -eo user:20=,unit:60=,args=").splitlines()
    for unit, user in SERVICES[host].items():
        assert ssh(address, f"systemctl show -p User --value {unit}") == user
        mine = [p.split(None, 2) for p in processes if f" {unit}.service " in p]
        assert mine, f"{host}: no process of {unit}"
        print(host, unit, sorted({p[0] for p in mine}))
        assert {p[0] for p in mine} == {user}, f"{host}: {unit} runs as {mine}"


@pytest.mark.parametrize("host", HOSTS)
def test_units_meet_the_exposure_targets(converged: object, host: str) -> None:
    address = HOSTS[host]
    scores = {}
    for unit in SERVICES[host]:
        out = ssh(address, f"systemd-analyze security --no-pager {unit}")
        score = re.search(r"exposure level for \S+: ([0-9.]+)", out)
        assert score, out[-500:]
        scores[unit] = float(score[1])
    print(host, scores)
    over = {u: s for u, s in scores.items() if s > EXPOSURE_MAX[u]}
    assert not over, f"{host}: exposure over target {EXPOSURE_MAX}: {over}"
