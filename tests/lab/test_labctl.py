"""The lab tool itself: hosts boot with systemd as PID 1, survive a reboot, and leave nothing."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import LABCTL, run

pytestmark = pytest.mark.lab

LAB, SUBNET = "labctl-test", "10.231.20.0/24"
SSH = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
       "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=3", "-i", "/var/lib/vllm-lab/ssh/id_ed25519"]


def ssh(address: str, command: str) -> str:
    return subprocess.run([*SSH, f"root@{address}", command], check=True, text=True,
                          capture_output=True, timeout=30).stdout.strip()


def reboot_state(name: str, address: str) -> str:
    """Why a host is not back: its console (the supervisor's log), whether its nspawn runs,
    whether it answers on the bridge, and the load of the machine under the lab."""
    console = Path(f"/run/vllm-lab/{name}.log")
    tail = console.read_text(errors="replace")[-3000:] if console.exists() else "(no console log)"
    here = subprocess.run(
        f"uptime; free -m; pgrep -af 'systemd-nspawn.*machine={name}' || "
        f"echo 'no nspawn for {name}'; "
        f"ping -c1 -W1 {address} >/dev/null && echo '{address} answers ping' || "
        f"echo '{address} does not answer ping'; "
        "ps -eo pid,pcpu,rss,etime,args --sort=-pcpu | head -12",
        shell=True, text=True, capture_output=True).stdout
    return f"--- {name}'s console:\n{tail}\n--- the machine under the lab:\n{here}"


def leftovers() -> list[str]:
    found = []
    if "vlab-labctl-te" in subprocess.run(["ip", "-o", "link"], text=True,
                                          capture_output=True).stdout:
        found.append("bridge")
    if "vllm_lab_labctl_test" in subprocess.run(["nft", "list", "tables"], text=True,
                                                capture_output=True).stdout:
        found.append("nft table")
    if "/var/lib/vllm-lab/machines/lt-" in Path("/proc/mounts").read_text():
        found.append("overlay mount")
    procs = subprocess.run(["pgrep", "-af", "systemd-nspawn.*--machine=lt-"], text=True,
                           capture_output=True).stdout
    if procs.strip():
        found.append(f"processes: {procs.strip()}")
    for root in ("/sys/fs/cgroup/systemd/vllm-lab", "/sys/fs/cgroup/unified/vllm-lab"):
        for name in ("lt-a", "lt-b"):
            if Path(root, name).exists():
                found.append(f"cgroup {root}/{name}")
    return found


def test_hosts_boot_reboot_and_leave_nothing_behind() -> None:
    up = json.loads(run([str(LABCTL), "up", "--lab", LAB, "--subnet", SUBNET,
                         "lt-a", "lt-b"]).stdout)
    try:
        hosts = {h["name"]: h["address"] for h in up["hosts"]}
        assert set(hosts) == {"lt-a", "lt-b"} and len(set(hosts.values())) == 2
        a = hosts["lt-a"]
        assert ssh(a, "ps -p 1 -o comm=") == "systemd"
        assert ssh(a, "hostname") == "lt-a"
        # Each host has its own identity: machine id and SSH host key differ.
        assert ssh(a, "cat /etc/machine-id") != ssh(hosts["lt-b"], "cat /etc/machine-id")
        boot_before = ssh(a, "cat /proc/sys/kernel/random/boot_id")
        subprocess.run([*SSH, f"root@{a}", "systemctl reboot"], timeout=30)
        # A reboot takes seconds on an idle machine; CI runs it beside Molecule converges.
        deadline = time.monotonic() + 120
        boot_after = boot_before
        while time.monotonic() < deadline and boot_after == boot_before:
            time.sleep(1)
            try:
                boot_after = ssh(a, "cat /proc/sys/kernel/random/boot_id")
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                continue
        assert boot_after != boot_before, (
            f"lt-a did not come back from a reboot\n{reboot_state('lt-a', a)}")
    finally:
        run([str(LABCTL), "down", "--lab", LAB])
    assert leftovers() == []
