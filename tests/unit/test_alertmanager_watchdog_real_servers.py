"""postcheck/alertmanager.py against a real Prometheus and a real Alertmanager on loopback:
the Watchdog rule of the prometheus role reaches the Alertmanager, or the check says where not."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from realservers import free_port, start_alertmanager, start_prometheus

from postcheck.alertmanager import watchdog_check
from postcheck.prometheus import Prometheus
from postcheck.report import CheckFailed, CheckSkipped

AM_CONFIG = "route: {receiver: none}\nreceivers: [{name: none}]\n"


def prometheus_config(rules: Path, targets: list[str]) -> str:
    alerting = f"alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: {targets}\n"
    return (f"global: {{evaluation_interval: 1s}}\nrule_files: [{rules}]\n"
            + (alerting if targets else ""))


@pytest.fixture
def stack(tmp_path: Path, rendered_rules: Path) -> Iterator[tuple[Path, str]]:
    rules = tmp_path / "node.alerts.yml"
    shutil.copy(rendered_rules / "node.alerts.yml", rules)
    (tmp_path / "alertmanager.yml").write_text(AM_CONFIG)
    am, url = start_alertmanager(tmp_path / "alertmanager.yml", tmp_path)
    yield rules, url
    am.terminate()
    am.wait(timeout=20)


def run_check(tmp_path: Path, rules: Path, targets: list[str], wait_s: float) -> str:
    # Alerts sent before Prometheus discovered its Alertmanagers are dropped and sent again
    # after the resend delay (1 min by default; the post-check waits that long): 1 s here.
    prom, url = start_prometheus(prometheus_config(rules, targets), tmp_path,
                                 "--rules.alert.resend-delay=1s")
    try:
        return watchdog_check(Prometheus(url, 3), 3, wait_s)()
    finally:
        prom.terminate()
        prom.wait(timeout=20)


def test_the_role_s_watchdog_reaches_the_alertmanager(
    tmp_path: Path, stack: tuple[Path, str]
) -> None:
    rules, am_url = stack
    detail = run_check(tmp_path, rules, [am_url.removeprefix("http://")], wait_s=20)
    assert detail == f"Watchdog at all 1 Alertmanagers: {am_url}"


def test_an_alertmanager_prometheus_cannot_reach_fails_naming_it(
    tmp_path: Path, stack: tuple[Path, str]
) -> None:
    rules, am_url = stack
    closed = f"127.0.0.1:{free_port()}"
    with pytest.raises(CheckFailed) as failed:
        run_check(tmp_path, rules, [am_url.removeprefix("http://"), closed], wait_s=15)
    assert f"http://{closed}: " in str(failed.value)
    assert am_url not in str(failed.value)


def test_without_alertmanagers_the_check_is_skipped(
    tmp_path: Path, stack: tuple[Path, str]
) -> None:
    rules, _ = stack
    with pytest.raises(CheckSkipped, match="no Alertmanager"):
        run_check(tmp_path, rules, [], wait_s=1)
