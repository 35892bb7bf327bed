"""The post-check against a real Prometheus (Debian's) guarded by basic auth, as the
prometheus role sets it up with prometheus_web_basic_auth_users: the credentials come from
the inventory, queries pass with them and fail clearly without."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from conftest import write_inventory
from realservers import PROMETHEUS, free_port, wait_ready

from postcheck.inventory import load_fleet
from postcheck.prometheus import Prometheus
from postcheck.report import CheckFailed

PASSWORD = "a-long-test-password"


@pytest.fixture
def guarded_prometheus(tmp_path: Path) -> Iterator[str]:
    assert PROMETHEUS is not None, "no prometheus: make setup installs Debian's package"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "web.yml").write_text(f"basic_auth_users:\n  grafana: {hashed}\n")
    (tmp_path / "prometheus.yml").write_text("global: {scrape_interval: 1s}\n")
    port = free_port()
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
         f"--web.config.file={tmp_path / 'web.yml'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/-/ready", proc, "prometheus", auth=("grafana", PASSWORD))
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_credentials_from_the_inventory_open_a_guarded_prometheus(
    guarded_prometheus: str, tmp_path: Path
) -> None:
    port = guarded_prometheus.rsplit(":", 1)[1]
    inv = write_inventory(tmp_path, {"all": {"children": {
        "gpu_workers": {"hosts": {"w1": {"ansible_host": "127.0.0.1", "vllm_instances": [
            {"name": "a", "port": 8000, "model": "m"}]}}},
        "monitoring": {"hosts": {"mon": {
            "ansible_host": "127.0.0.1", "prometheus_web_listen_address": f"0.0.0.0:{port}",
            "prometheus_web_basic_auth_users": {"zz-other": "x" * 12, "grafana": PASSWORD}}}},
    }}})  # fmt: skip
    fleet = load_fleet(str(inv), vault_password_file=None)
    assert fleet.prometheus_url == guarded_prometheus
    assert fleet.prometheus_auth == ("grafana", PASSWORD)  # the first user by name
    assert PASSWORD in fleet.secrets  # so the report masks it

    assert Prometheus(guarded_prometheus, 5, fleet.prometheus_auth).build_version()
    with pytest.raises(CheckFailed, match="401"):
        Prometheus(guarded_prometheus, 5).build_version()
