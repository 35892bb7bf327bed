"""The prometheus role's rules and checks, with the real promtool and no lab.

The rule templates are rendered by Ansible (tests/promtool/render_rules.yml) with the role's
defaults and the SLOs of tests/promtool/vars.yml; promtool then checks them and runs the
unit tests in tests/promtool/*.test.yml: every alert must fire in one case and stay silent
in another.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PROMTOOL_TESTS, RULE_FILES, check_validate_cases, render_rules

PROMTOOL = shutil.which("promtool")
TESTS = PROMTOOL_TESTS


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "no promtool: make setup installs Debian's prometheus"
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def rendered(rendered_rules: Path) -> Path:
    for test in TESTS.glob("*.test.yml"):
        shutil.copy(test, rendered_rules)
    return rendered_rules


def alerts_in(path: Path) -> set[str]:
    return {
        rule["alert"]
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


@pytest.mark.parametrize("name", RULE_FILES)
def test_promtool_accepts_each_rendered_rule_file(rendered: Path, name: str) -> None:
    proc = promtool("check", "rules", name, cwd=rendered)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("test", sorted(p.name for p in TESTS.glob("*.test.yml")))
def test_promtool_unit_tests_pass(rendered: Path, test: str) -> None:
    proc = promtool("test", "rules", test, cwd=rendered)
    assert proc.returncode == 0, proc.stdout + proc.stderr


ALWAYS_FIRING = {"Watchdog"}


def test_every_alert_has_a_firing_and_a_silent_case(rendered: Path) -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for test in TESTS.glob("*.test.yml"):
        for group in yaml.safe_load(test.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    alerts = set().union(*(alerts_in(rendered / name) for name in RULE_FILES))
    assert alerts, "no alerts rendered"
    assert alerts - firing == set(), "alerts never shown firing"
    # The dead man's switch fires always: it has no silent case, by design.
    assert alerts - silent - ALWAYS_FIRING == set(), "alerts never shown silent"
    assert firing >= ALWAYS_FIRING and not ALWAYS_FIRING & silent


def test_without_slos_the_slo_file_is_empty_but_valid(tmp_path: Path) -> None:
    render_rules(tmp_path, None)
    assert yaml.safe_load((tmp_path / "vllm.slo.yml").read_text()) == {"groups": []}
    assert "PrometheusRemoteWriteBehind" not in alerts_in(tmp_path / "node.alerts.yml")
    for name in RULE_FILES:
        proc = promtool("check", "rules", name, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr


# --- tasks/validate.yml: bad options refused, naming the option ------------------------------

# The monitoring host is localhost; w1 is only there for its vllm_instances (never contacted).
INVENTORY: dict[str, Any] = {
    "all": {
        "children": {
            "monitoring": {"hosts": {"localhost": {"ansible_connection": "local"}}},
            "gpu_workers": {
                "hosts": {
                    "w1": {
                        "vllm_instances": [
                            {"name": "a", "port": 8000, "model": "/m/llama",
                             "served_model_name": "chat"},
                            {"name": "b", "port": 8001, "model": "/m/coder"},
                        ]
                    }
                }
            },
        }
    }
}
SLO = {"model": "chat", "availability": 0.999, "latency_threshold_seconds": 5,
       "latency_objective": 0.95, "window": "30d"}


def slos(*changes: dict[str, Any]) -> dict[str, Any]:
    """prometheus_vllm_slos with one SLO per change applied to SLO (None values removed)."""
    return {"prometheus_vllm_slos": [
        {k: v for k, v in {**SLO, **c}.items() if v is not None} for c in changes]}


CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("defaults", {}, None),
    ("an SLO per served model", slos({}, {"model": "/m/coder", "latency_threshold_seconds": 0.3}),
     None),
    ("basic auth and TLS", {"prometheus_web_basic_auth_users": {"grafana": "a-long-password-1"},
                            "prometheus_web_tls_cert_file": "/etc/ssl/p.pem",
                            "prometheus_web_tls_key_file": "/etc/ssl/p.key"}, None),
    ("latency threshold between buckets", slos({"latency_threshold_seconds": 3}),
     "latency_threshold_seconds=3 for chat: a latency SLO counts requests under one bucket"),
    ("the list of valid boundaries", slos({"latency_threshold_seconds": 3}),
     "0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10"),
    ("SLO for a model nobody serves", slos({"model": "gpt-5"}),
     "prometheus_vllm_slos[0].model=gpt-5"),
    ("SLO twice", slos({}, {}), "model=chat: SLOs are per served model name, once each"),
    ("availability of 99.9", slos({"availability": 99.9}), "prometheus_vllm_slos[0] (chat)"),
    ("SLO without window", slos({"window": None}), "prometheus_vllm_slos[0] (chat)"),
    ("retention size", {"prometheus_retention_size": "200G"}, "prometheus_retention_size=200G"),
    ("retention time", {"prometheus_retention_time": "a month"},
     "prometheus_retention_time=a month"),
    ("storage path relative", {"prometheus_storage_path": "data"}, "prometheus_storage_path=data"),
    ("timeout longer than interval", {"prometheus_scrape_timeout": "30s"},
     "prometheus_scrape_timeout=30s is longer than prometheus_scrape_interval=15s"),
    ("port", {"prometheus_web_listen_address": "0.0.0.0:99999"},
     "prometheus_web_listen_address=0.0.0.0:99999"),
    ("external label name", {"prometheus_external_labels": {"gpu-cluster": "a"}},
     "prometheus_external_labels: gpu-cluster"),
    ("reserved label name", {"prometheus_external_labels": {"__name__": "a"}},
     "prometheus_external_labels: __name__"),
    ("short basic auth password", {"prometheus_web_basic_auth_users": {"grafana": "short"}},
     "needs user names of [A-Za-z0-9_.@-] and passwords of at least 12 characters"),
    ("TLS cert without key", {"prometheus_web_tls_cert_file": "/etc/ssl/p.pem"},
     "prometheus_web_tls_key_file= go together"),
    ("remote_write password inline", {"prometheus_remote_write": [
        {"url": "https://mimir/api/v1/push", "basic_auth": {"username": "u", "password": "p"}}]},
     "prometheus_remote_write needs a url (http:// or https://) in every entry, with secrets"),
    ("remote_write without url", {"prometheus_remote_write": [{"name": "x"}]},
     "prometheus_remote_write needs a url (http:// or https://) in every entry, with secrets"),
    ("alertmanager URL instead of HOST:PORT", {"prometheus_alertmanagers": ["http://am:9093"]},
     "prometheus_alertmanagers=['http://am:9093']"),
    # Refused by the argument specs (type int) before tasks/validate.yml, as in the preflight.
    ("threshold not a number", {"prometheus_alert_queue_depth": "many"},
     "argument 'prometheus_alert_queue_depth' is of type str"),
    ("for not a duration", {"prometheus_alert_vllm_down_for": "ten minutes"},
     "prometheus_alert_vllm_down_for=ten minutes"),
    ("stall window not a Prometheus duration", {"prometheus_alert_vllm_stall_window": "2 min"},
     "prometheus_alert_vllm_stall_window=2 min on localhost: needs a Prometheus duration"),
    ("stall for in seconds as a number", {"prometheus_alert_vllm_stall_for": 180},
     "prometheus_alert_vllm_stall_for=180 on localhost: needs a Prometheus duration"),
    ("ECC window with a unit Prometheus lacks", {"prometheus_alert_gpu_ecc_window": "1hr"},
     "prometheus_alert_gpu_ecc_window=1hr on localhost: needs a Prometheus duration"),
    ("thermal window empty", {"prometheus_alert_gpu_thermal_window": ""},
     "prometheus_alert_gpu_thermal_window= on localhost: needs a Prometheus duration"),
    ("no Xids", {"prometheus_alert_gpu_xids": []},
     "prometheus_alert_gpu_xids=[] on localhost: the severity is a label value"),
    ("Xid zero", {"prometheus_alert_gpu_xids": [79, 0]},
     "prometheus_alert_gpu_xids=[79, 0] on localhost"),
    ("Xid not a number", {"prometheus_alert_gpu_xids": ["Xid79"]},
     "Elements value for option 'prometheus_alert_gpu_xids' is of type"),
    ("GPU severity with a space", {"prometheus_alert_gpu_severity": "page me"},
     "prometheus_alert_gpu_severity=page me and"),
    ("short lab stall thresholds", {"prometheus_alert_vllm_stall_window": "20s",
                                    "prometheus_alert_vllm_stall_for": "15s"}, None),
    # From the lab's site.yml cases (tests/lab/test_site.py keeps a few).
    ("scrape interval", {"prometheus_scrape_interval": "fast"}, "prometheus_scrape_interval=fast"),
    ("external labels not a mapping", {"prometheus_external_labels": ["cluster", "eu"]},
     "argument 'prometheus_external_labels' is of type list"),
    ("invalid external label name", {"prometheus_external_labels": {"bad-label": "eu"}},
     "prometheus_external_labels: bad-label is not a valid label name"),
    ("timeout longer than the lab's interval", {"prometheus_scrape_interval": "5s",
                                                "prometheus_scrape_timeout": "10s"},
     "prometheus_scrape_timeout=10s is longer than prometheus_scrape_interval=5s"),
    ("extra scrape configs not a list", {"prometheus_extra_scrape_configs": "job_name: x"},
     "Elements value for option 'prometheus_extra_scrape_configs' is of type str"),
]  # fmt: skip


def test_prometheus_validate_refuses_bad_options_naming_them(tmp_path: Path) -> None:
    out = check_validate_cases(
        "prometheus", CASES, {}, tmp_path, inventory=INVENTORY, argument_spec=True
    )
    assert "a-long-password-1" not in out
