"""Fixtures for tests on real lab hosts (systemd-nspawn machines booted by lab/labctl)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LABCTL = ROOT / "lab" / "labctl"
LAB_INVENTORY = ROOT / "inventory" / "lab"
CACHE = Path("/var/cache/vllm-lab")
LAB_BINDS = [
    f"--bind-ro={CACHE / 'wheelhouse'}:/opt/wheelhouse",
    f"--bind-ro={CACHE / 'models'}:/srv/models",
]


def tool_env() -> dict[str, str]:
    """The environment the project's tools run in: the virtualenv first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env.setdefault("ANSIBLE_FORCE_COLOR", "0")
    return env


def run(cmd: list[str], cwd: Path = ROOT, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, echoing its output so a failure in CI shows what happened."""
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), text=True, capture_output=True)
    print(proc.stdout[-20000:], proc.stderr[-5000:], sep="\n", flush=True)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}")
    return proc


def lab_group_vars(group: str) -> dict[str, Any]:
    """inventory/lab's variables for one group, as ops wrote them."""
    path = LAB_INVENTORY / "group_vars" / f"{group}.yml"
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def playbook(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "ansible-playbook"), "-i", str(LAB_INVENTORY), *args], check=check)


@pytest.fixture(scope="session")
def lab() -> Iterator[dict[str, object]]:
    """The demo lab from inventory/lab, booted fresh for the session and removed after."""
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (systemd-nspawn, mounts, bridges)")
    if os.environ.get("LAB_REUSE") == "1":  # a developer's running demo lab, kept as it is
        status = json.loads(run([str(LABCTL), "status"]).stdout)
        demo = [lab for lab in status if lab["lab"] == "demo"]
        if demo and all(h["running"] for h in demo[0]["hosts"]):
            yield demo[0]
            return
    run([str(LABCTL), "down", "--lab", "demo"])
    up = run([str(LABCTL), "up", "--lab", "demo", "--subnet", "10.231.0.0/24",
              "--inventory", str(LAB_INVENTORY), *LAB_BINDS])
    yield json.loads(up.stdout)
    run([str(LABCTL), "down", "--lab", "demo"])


# ---------------------------------------------------------------- the converged demo lab
WORKER, MONITOR, GATEWAY = "10.231.0.10", "10.231.0.11", "10.231.0.12"
# Every host of inventory/lab (test_site_security.py checks both against the inventory and
# each host's running services).
HOSTS = {"lab-worker1": WORKER, "lab-mon1": MONITOR, "lab-gw1": GATEWAY}
# Every service the project installs, with the user it must run as (both vLLM instances of
# inventory/lab; test_no_project_service_is_left_out checks each host's running services).
SERVICES = {
    "lab-worker1": {"vllm-tiny": "vllm", "vllm-tiny-b": "vllm",
                    "prometheus-node-exporter": "prometheus"},
    "lab-mon1": {"prometheus": "prometheus", "prometheus-node-exporter": "prometheus",
                 "prometheus-alertmanager": "alertmanager"},
    "lab-gw1": {"vllm-gateway": "vllm-gateway", "prometheus-node-exporter": "prometheus"},
}
PROMETHEUS = f"http://{MONITOR}:9090"
VLLM = f"http://{WORKER}:8000"
SSH = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
       "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=3", "-o", "BatchMode=yes",
       "-i", "/var/lib/vllm-lab/ssh/id_ed25519"]


def ssh(address: str, command: str, check: bool = True, stdin: str | None = None,
        timeout: float = 60) -> str:
    """A command on a lab host as root; its stdout."""
    proc = subprocess.run([*SSH, f"root@{address}", command], text=True, capture_output=True,
                          input=stdin, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{address}: {command} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout.strip()


def http() -> requests.Session:
    """Lab addresses are private: never through a proxy from the environment."""
    s = requests.Session()
    s.trust_env = False
    return s


def prometheus_ready() -> bool:
    try:
        return http().get(f"{PROMETHEUS}/-/ready", timeout=3).status_code == 200
    except requests.RequestException:
        return False


def vllm_serving() -> bool:
    try:
        r = http().post(f"{VLLM}/v1/completions", timeout=10,
                        json={"model": "tiny-llama", "prompt": "Hello", "max_tokens": 1})
        return r.status_code == 200
    except requests.RequestException:
        return False


def wait_for(what: str, ok: Callable[[], bool], timeout: float, every: float = 0.5,
             explain: Callable[[], str] | None = None) -> float:
    """Poll until ok() or fail after timeout (with what explain() says); the seconds it took."""
    start = time.monotonic()
    while not ok():
        if time.monotonic() - start > timeout:
            why = f"\n{explain()}" if explain else ""
            pytest.fail(f"{what}: not within {timeout:.0f} s{why}")
        time.sleep(every)
    return time.monotonic() - start


def vllm_state() -> str:
    """The worker's side of a vLLM that does not serve: its unit, its journal, the memory and
    load of the worker and of the machine under the lab (CI keeps only the test's output)."""
    commands = ("systemctl status vllm-tiny --no-pager --lines 0; "
                "journalctl --unit vllm-tiny --lines 60 --no-pager; free -m; uptime")
    try:
        worker = ssh(WORKER, commands, check=False, timeout=30)
    except subprocess.TimeoutExpired:
        worker = "(ssh to the worker timed out)"
    here = subprocess.run("free -m; uptime; ps -eo pid,rss,pcpu,etime,args --sort=-rss | head -15",
                          shell=True, text=True, capture_output=True).stdout
    return f"--- {WORKER}:\n{worker}\n--- the machine under the lab:\n{here}"


def wait_vllm_serving(what: str, timeout: float) -> float:
    return wait_for(what, vllm_serving, timeout=timeout, every=1, explain=vllm_state)


@pytest.fixture(scope="module")
def converged(lab: dict[str, object]) -> dict[str, object]:
    """The demo lab with site.yml applied: test_site.py leaves it so; alone, converge it."""
    if not prometheus_ready():
        playbook("site.yml", "--skip-tags", "postcheck")
    wait_vllm_serving("vllm-tiny serving", timeout=240)
    wait_for("Prometheus ready", prometheus_ready, timeout=60)
    return lab
