"""The alertmanager role's configuration, with the real amtool and Alertmanager and no lab.

alertmanager.yml is rendered by Ansible (tests/amtool/render_config.yml) from the role's
defaults and tests/amtool/vars.yml; amtool checks it and runs the route cases of
tests/amtool/routes.yml. Every alert the prometheus role's rules can fire needs a case, as
every alert needs a promtool case. The inhibitions run in a real Alertmanager on loopback.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from conftest import REPO, RULE_FILES, run_ansible_playbook
from realservers import start_alertmanager

AMTOOL = shutil.which("amtool")
AMTOOL_TESTS = REPO / "tests" / "amtool"
CASES: list[dict[str, Any]] = yaml.safe_load((AMTOOL_TESTS / "routes.yml").read_text())["cases"]
SECRETS = ["test-routing-key", "test-smtp-password", "test-token", "test-bearer-token"]


def render_config(dest: Path, vars_file: Path = AMTOOL_TESTS / "vars.yml") -> Path:
    args = ["-i", str(AMTOOL_TESTS / "hosts.yml"), str(AMTOOL_TESTS / "render_config.yml"),
            "-e", f"render_dest={dest}", "-e", f"render_vars={vars_file}"]
    proc = run_ansible_playbook(args, dest.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dest


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert AMTOOL is not None, "no amtool: make setup installs Debian's prometheus-alertmanager"
    return subprocess.run([AMTOOL, *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_config(tmp_path_factory.mktemp("am") / "alertmanager.yml")


def test_amtool_accepts_the_rendered_configuration(config: Path) -> None:
    proc = amtool("check-config", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 inhibit rules" in proc.stdout and "7 receivers" in proc.stdout


def test_secrets_are_named_by_file_never_written_inline(config: Path) -> None:
    text = config.read_text()
    assert not [s for s in SECRETS if s in text]
    for option in ["routing_key_file", "auth_password_file", "api_url_file", "credentials_file"]:
        assert f"{option}: /etc/alertmanager/secrets/" in text, option


@pytest.mark.parametrize("case", CASES, ids=[
    f"{c['labels']['alertname']}-{'-'.join(c['receivers'])}" for c in CASES])
def test_each_alert_reaches_its_receivers(config: Path, case: dict[str, Any]) -> None:
    labels = [f"{k}={v}" for k, v in case["labels"].items()]
    proc = amtool("config", "routes", "test", f"--config.file={config}",
                  f"--verify.receivers={','.join(case['receivers'])}", *labels)
    assert proc.returncode == 0, f"{labels}: reached {proc.stdout.strip()}, not {case['receivers']}"


def test_every_alert_the_rules_fire_has_a_route_case_with_its_severity(
    rendered_rules: Path,
) -> None:
    severities: dict[str, set[str]] = {}
    for name in RULE_FILES:
        for group in yaml.safe_load((rendered_rules / name).read_text())["groups"] or []:
            for rule in group["rules"]:
                if "alert" in rule:
                    severities.setdefault(rule["alert"], set()).add(rule["labels"]["severity"])
    assert "Watchdog" in severities and len(severities) > 15
    cased: dict[str, set[str]] = {}
    for case in CASES:
        cased.setdefault(case["labels"]["alertname"], set()).add(case["labels"].get("severity", ""))
    assert set(severities) - set(cased) == set(), "alerts without a route case in routes.yml"
    wrong = {a: (s, cased[a]) for a, s in severities.items() if not s <= cased[a]}
    assert not wrong, f"route cases not at the rules' severity: {wrong}"


# --- inhibitions, in a real Alertmanager -----------------------------------------------------

@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Alertmanager on loopback with the role's routes and inhibitions, and no receiver at
    all (every alert ends at "none"): nothing leaves the machine."""
    folder = tmp_path_factory.mktemp("am-run")
    vars_file = folder / "vars.yml"
    vars_file.write_text("alertmanager_receivers: []\n")
    render_config(folder / "alertmanager.yml", vars_file)
    proc, url = start_alertmanager(folder / "alertmanager.yml", folder)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def inhibited(url: str, source: dict[str, str], target: dict[str, str]) -> bool:
    """Post both alerts; whether Alertmanager marks the target inhibited by the source."""
    s = requests.Session()
    s.trust_env = False
    assert s.post(f"{url}/api/v2/alerts", json=[{"labels": source}, {"labels": target}],
                  timeout=5).status_code == 200
    matchers = [f'{k}="{v}"' for k, v in target.items()]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        alerts = s.get(f"{url}/api/v2/alerts", params={"filter": matchers}, timeout=5).json()
        if alerts and alerts[0]["status"]["inhibitedBy"]:
            return True
        time.sleep(0.2)
    return False


INHIBITIONS = [
    ("instance down: its queue", True,
     {"alertname": "VllmInstanceDown", "host": "h1", "vllm_instance": "a", "model_name": "m1"},
     {"alertname": "VllmQueueDepthHigh", "host": "h1", "vllm_instance": "a", "model_name": "m1"}),
    ("instance down: not another instance's queue", False,
     {"alertname": "VllmInstanceDown", "host": "h2", "vllm_instance": "a", "model_name": "m2"},
     {"alertname": "VllmQueueDepthHigh", "host": "h2", "vllm_instance": "b", "model_name": "m2"}),
    ("instance down: its model's server errors", True,
     {"alertname": "VllmInstanceDown", "host": "h3", "vllm_instance": "a", "model_name": "m3"},
     {"alertname": "VllmServerErrorsHigh", "model_name": "m3", "severity": "critical"}),
    ("instance down: its model's latency", True,
     {"alertname": "VllmInstanceDown", "host": "h4", "vllm_instance": "a", "model_name": "m4"},
     {"alertname": "VllmLatencyP95High", "model_name": "m4", "severity": "warning"}),
    ("host down: its instances' alerts", True,
     {"alertname": "NodeExporterDown", "host": "h5", "severity": "critical"},
     {"alertname": "VllmInstanceDown", "host": "h5", "vllm_instance": "a", "severity": "critical"}),
    ("host down: not other hosts' alerts", False,
     {"alertname": "NodeExporterDown", "host": "h6", "severity": "critical"},
     {"alertname": "NodeDiskAlmostFull", "host": "h7", "severity": "critical"}),
    ("page: the ticket of the same SLO", True,
     {"alertname": "VllmSloAvailabilityFastBurn", "severity": "page", "slo": "availability",
      "model_name": "m8"},
     {"alertname": "VllmSloAvailabilitySlowBurn", "severity": "ticket", "slo": "availability",
      "model_name": "m8"}),
    ("page: not the ticket of another SLO", False,
     {"alertname": "VllmSloAvailabilityFastBurn", "severity": "page", "slo": "availability",
      "model_name": "m9"},
     {"alertname": "VllmSloLatencySlowBurn", "severity": "ticket", "slo": "latency",
      "model_name": "m9"}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "expected", "source", "target"), INHIBITIONS,
                         ids=[c[0] for c in INHIBITIONS])
def test_inhibitions_in_a_real_alertmanager(
    alertmanager: str, name: str, expected: bool, source: dict[str, str], target: dict[str, str]
) -> None:
    assert inhibited(alertmanager, source, target) is expected, name
