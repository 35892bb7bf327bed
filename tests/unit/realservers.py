"""Real Debian servers started for a unit test: Prometheus and node_exporter on loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

PROMETHEUS = shutil.which("prometheus")
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(
    url: str, proc: subprocess.Popen[bytes], what: str, auth: tuple[str, str] | None = None
) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=1, auth=auth).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    pytest.fail(f"{what} did not answer on {url}")


def start_prometheus(
    config: str, folder: Path, *args: str
) -> tuple[subprocess.Popen[bytes], str]:
    """A real Prometheus with this prometheus.yml, ready; the caller terminates it."""
    assert PROMETHEUS is not None, "no prometheus: make setup installs Debian's package"
    (folder / "prometheus.yml").write_text(config)
    port = free_port()
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/-/ready", proc, "prometheus")
    return proc, url


ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def start_alertmanager(config: Path, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A real Alertmanager with this alertmanager.yml, alone (no cluster), ready."""
    assert ALERTMANAGER is not None, "no Alertmanager: make setup installs Debian's package"
    port = free_port()
    proc = subprocess.Popen(
        [ALERTMANAGER, f"--config.file={config}", f"--storage.path={folder / 'am-data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/-/ready", proc, "alertmanager")
    return proc, url
