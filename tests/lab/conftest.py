"""Fixtures for tests on real lab hosts (systemd-nspawn machines booted by lab/labctl)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def playbook(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "ansible-playbook"), "-i", str(LAB_INVENTORY), *args], check=check)


@pytest.fixture(scope="session")
def lab() -> Iterator[dict[str, object]]:
    """The demo lab from inventory/lab, booted fresh for the session and removed after."""
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (systemd-nspawn, mounts, bridges)")
    run([str(LABCTL), "down", "--lab", "demo"])
    up = run([str(LABCTL), "up", "--lab", "demo", "--subnet", "10.231.0.0/24",
              "--inventory", str(LAB_INVENTORY), *LAB_BINDS])
    yield json.loads(up.stdout)
    run([str(LABCTL), "down", "--lab", "demo"])
