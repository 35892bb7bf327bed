"""The alertmanager role's gateway drain (alertmanager_gateway_drain): its refusals, the rendered
receiver and route checked by the real amtool, and a real Alertmanager calling the real
gateway's POST /admin/alerts (workers: FakeWorker, fakes, not vLLM) to drain and undrain."""

from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from conftest import REPO, check_validate_cases, run_ansible_playbook, write_inventory
from gateway_fakes import FakeWorker, config, gateway, post, run, wait_until
from realservers import free_port, start_alertmanager

AMTOOL = shutil.which("amtool")
RENDER = REPO / "tests" / "amtool" / "render_config.yml"

# This host is the one Alertmanager; two gateways (one on IPv6, one with its own admin port);
# a gateway whose admin port listens on loopback only, in a group of its own.
INVENTORY: dict[str, Any] = {
    "all": {
        "children": {
            "monitoring": {"hosts": {"localhost": {"ansible_connection": "local",
                                                   "ansible_host": "127.0.0.1"}}},
            "gateways": {"hosts": {"gw-1": {"ansible_host": "10.0.0.5"},
                                   "gw-2": {"ansible_host": "fd00::6",
                                            "gateway_metrics_port": 9080}}},
            "loopback_gateways": {"hosts": {"gw-lo": {"ansible_host": "10.0.0.7",
                                                      "gateway_metrics_host": "127.0.0.1"}}},
            "gpu_workers": {"hosts": {"gpu1": {}}},
        }
    }
}
PAGER = {"name": "pager", "type": "webhook", "url": "https://pager.example/hook"}
GOOD: dict[str, Any] = {
    "alertmanager_gateway_drain": True,
    "alertmanager_receivers": [PAGER],
    "alertmanager_severity_receivers": {"page": "pager"},
}

CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("good", {}, None),
    ("off, with no gateway group", {"alertmanager_gateway_drain": False,
                                    "alertmanager_gateway_drain_group": "edge"}, None),
    ("a port of their own", {"alertmanager_gateway_drain_port": 9999}, None),
    ("on, the group has no host", {"alertmanager_gateway_drain_group": "edge"},
     "alertmanager_gateway_drain=true on localhost, but the group "
     "alertmanager_gateway_drain_group=edge has no host"),
    ("port out of range", {"alertmanager_gateway_drain_port": 70000},
     "alertmanager_gateway_drain_port=70000 on localhost: the gateways' admin port (1-65535)"),
    ("negative port", {"alertmanager_gateway_drain_port": -1},
     "alertmanager_gateway_drain_port=-1 on localhost"),
    ("a receiver of that name", {"alertmanager_receivers": [
        PAGER, {"name": "gateway-drain", "type": "webhook", "url": "http://x.example/"}]},
     "alertmanager_receivers has a receiver named gateway-drain"),
    ("a gateway on loopback", {"alertmanager_gateway_drain_group": "loopback_gateways"},
     "gateway gw-lo listens for its admin API on gateway_metrics_host=127.0.0.1 (loopback)"),
    ("bad repeat interval", {"alertmanager_gateway_drain_repeat_interval": "5 min"},
     "alertmanager_gateway_drain_repeat_interval=5 min: needs a duration"),
    ("bad group interval", {"alertmanager_gateway_drain_group_interval": "1 minute"},
     "alertmanager_gateway_drain_group_interval=1 minute: needs a duration"),
    ("drain not a boolean", {"alertmanager_gateway_drain": "sometimes"},
     "argument 'alertmanager_gateway_drain' is of type str and we were unable to convert to bool"),
]


def test_alertmanager_validate_refuses_bad_drain_options_naming_them(tmp_path: Path) -> None:
    check_validate_cases("alertmanager", CASES, GOOD, tmp_path, inventory=INVENTORY,
                         argument_spec=True)


def render(folder: Path, inventory: dict[str, Any], variables: dict[str, Any]) -> Path:
    """alertmanager.yml as the role renders it, for this inventory and these variables."""
    (folder / "vars.yml").write_text(yaml.safe_dump(variables))
    dest = folder / "alertmanager.yml"
    proc = run_ansible_playbook(
        ["-i", str(write_inventory(folder, inventory)), str(RENDER),
         "-e", f"render_dest={dest}", "-e", f"render_vars={folder / 'vars.yml'}"], folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dest


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert AMTOOL is not None, "no amtool: make setup installs Debian's prometheus-alertmanager"
    return subprocess.run([AMTOOL, *args], capture_output=True, text=True)


def test_the_drain_receiver_calls_every_gateway_and_the_page_still_goes_out(
        tmp_path: Path) -> None:
    path = render(tmp_path, INVENTORY, GOOD)
    proc = amtool("check-config", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    conf = yaml.safe_load(path.read_text())
    drain = next(r for r in conf["receivers"] if r["name"] == "gateway-drain")
    assert drain["webhook_configs"] == [
        {"url": "http://10.0.0.5:8080/admin/alerts", "send_resolved": True},
        {"url": "http://[fd00::6]:9080/admin/alerts", "send_resolved": True}]
    first = conf["route"]["routes"][0]
    assert first == {"receiver": "gateway-drain", "matchers": ['action="drain_host"'],
                     "group_by": ["alertname", "host"], "group_wait": "0s",
                     "group_interval": "1m", "repeat_interval": "5m", "continue": True}
    for labels, receivers in [
        (["alertname=GpuXidError", "severity=page", "host=gpu1", "action=drain_host"],
         "gateway-drain,pager"),
        (["alertname=VllmInstanceDown", "severity=page", "host=gpu1"], "pager"),
    ]:
        proc = amtool("config", "routes", "test", f"--config.file={path}",
                      f"--verify.receivers={receivers}", *labels)
        assert proc.returncode == 0, f"{labels}: reached {proc.stdout.strip()}, not {receivers}"


def am_alert(ends: datetime.datetime | None = None) -> list[dict[str, Any]]:
    """A synthetic GPU-fault alert as Prometheus posts it to Alertmanager's API v2."""
    now = datetime.datetime.now(datetime.UTC)
    alert: dict[str, Any] = {
        "labels": {"alertname": "GpuXidError", "severity": "page", "host": "gpu1",
                   "action": "drain_host", "gpu": "0"},
        "startsAt": (now - datetime.timedelta(seconds=30)).isoformat()}
    if ends is not None:
        alert["endsAt"] = ends.isoformat()
    return [alert]


def test_a_real_alertmanager_drains_and_undrains_through_the_gateway(tmp_path: Path) -> None:
    port = free_port()
    inventory = {"all": {"children": {
        "monitoring": {"hosts": {"localhost": {"ansible_connection": "local",
                                               "ansible_host": "127.0.0.1"}}},
        "gateways": {"hosts": {"gw-local": {"ansible_host": "127.0.0.1",
                                            "gateway_metrics_port": port}}}}}}
    path = render(tmp_path, inventory, {"alertmanager_gateway_drain": True,
                                        "alertmanager_gateway_drain_group_interval": "1s"})
    am, am_url = start_alertmanager(path, tmp_path)

    async def scenario() -> None:
        fakes = [await FakeWorker(model="m").start() for _ in range(2)]
        cfg = config({"m": [("gpu1/a", fakes[0].url, 4), ("gpu2/a", fakes[1].url, 4)]},
                     metrics={"host": "127.0.0.1", "port": port})
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            gpu1 = gw.find_worker("gpu1/a")
            assert gpu1 is not None
            async with s.post(f"{am_url}/api/v2/alerts", json=am_alert()) as r:
                assert r.status == 200
            await wait_until(lambda: gpu1.draining, timeout_s=20)
            assert not gw.find_worker("gpu2/a").draining  # type: ignore[union-attr]
            assert (await post(s, gw))[0] == 200
            assert len(fakes[0].received) == 0 and len(fakes[1].received) == 1
            # Prometheus sends the resolved alert with its end time.
            async with s.post(f"{am_url}/api/v2/alerts",
                              json=am_alert(ends=datetime.datetime.now(datetime.UTC))) as r:
                assert r.status == 200
            await wait_until(lambda: not gpu1.draining, timeout_s=20)
            async with s.get(f"http://127.0.0.1:{port}/admin/alerts") as r:
                assert await r.json() == {"holding": {}, "drained_by_alerts": []}
        for f in fakes:
            await f.stop()

    try:
        run(scenario, timeout_s=60)
    finally:
        am.terminate()
        am.wait(timeout=20)

