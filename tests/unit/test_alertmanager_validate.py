"""The alertmanager role's tasks/validate.yml: bad options refused, naming the option."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import check_validate_cases

# This host is the one Alertmanager, at 127.0.0.1; w1 only names a host group.
INVENTORY: dict[str, Any] = {
    "all": {
        "children": {
            "monitoring": {"hosts": {"localhost": {"ansible_connection": "local",
                                                   "ansible_host": "127.0.0.1"}}},
            "gpu_workers": {"hosts": {"w1": {}}},
        }
    }
}
HOOK = {"name": "hook", "type": "webhook", "url": "https://alerts.example/hook"}
PAGER = {"name": "pager", "type": "pagerduty", "routing_key": "a-secret-routing-key"}
GOOD: dict[str, Any] = {
    "alertmanager_receivers": [HOOK, PAGER],
    "alertmanager_default_receiver": "hook",
    "alertmanager_severity_receivers": {"page": "pager"},
}


def receivers(*extra: dict[str, Any]) -> dict[str, Any]:
    return {"alertmanager_receivers": [HOOK, PAGER, *extra]}


CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("good", {}, None),
    ("no receivers at all", {"alertmanager_receivers": [], "alertmanager_default_receiver": "",
                             "alertmanager_severity_receivers": {}}, None),
    ("every type, secrets by value and by file", receivers(
        {"name": "mail", "type": "email", "to": "a@b.c", "from": "d@e.f", "smarthost": "m:25",
         "auth_password": "pw-value"},
        {"name": "slack", "type": "slack", "api_url_file": "/etc/slack.url"},
        {"name": "token", "type": "webhook", "url": "https://x.example/", "bearer_token": "t"}),
     None),
    ("a group route", {"alertmanager_routes": [{"receiver": "hook", "group": "gpu_workers"}]},
     None),
    ("webhook url_secret on the archive 0.26", {
        "alertmanager_install_method": "archive", "alertmanager_version": "0.26.0",
        "alertmanager_archive_sha256": "a" * 64,
        **receivers({"name": "hb", "type": "webhook", "url_secret": "https://hc.example/ping/uuid"})},
     None),
    ("unknown receiver type", receivers({"name": "x", "type": "telegram"}),
     "alertmanager_receivers[2] (name=x, type=telegram)"),
    ("duplicate receiver", receivers(dict(HOOK)), "alertmanager_receivers[0] (name=hook"),
    ("receiver named none", receivers({"name": "none", "type": "webhook", "url": "http://a/"}),
     "alertmanager_receivers[2] (name=none, type=webhook): needs a unique name"),
    ("email without smarthost", receivers({"name": "m", "type": "email", "to": "a@b.c",
                                           "from": "d@e.f"}),
     "alertmanager_receivers[2] (m, type email) lacks what its type needs"),
    ("route to a missing receiver", {"alertmanager_routes": [{"receiver": "nobody",
                                                             "matchers": {"team": "x"}}]},
     "alertmanager_routes[0].receiver=nobody names no receiver"),
    ("severity to a missing receiver", {"alertmanager_severity_receivers": {"page": "oncall"}},
     "alertmanager_severity_receivers.page=oncall names no receiver"),
    ("heartbeat to a missing receiver", {"alertmanager_heartbeat_receiver": "hc"},
     "alertmanager_heartbeat_receiver=hc names no receiver"),
    ("route on a missing group", {"alertmanager_routes": [{"receiver": "hook", "group": "gpu_eu"}]},
     "alertmanager_routes[0]: matchers={} must map label names"),
    ("route with a bad label name", {"alertmanager_routes": [
        {"receiver": "hook", "matchers": {"model-name": "x"}}]},
     "alertmanager_routes[0]: matchers={'model-name': 'x'} must map label names to regexes"),
    ("password inline in a webhook URL", receivers(
        {"name": "inline", "type": "webhook", "url": "https://u:secret@hooks.example/x"}),
     "alertmanager_receivers[2] (inline): a secret would be written into alertmanager.yml"),
    ("token in a webhook URL's query", receivers(
        {"name": "q", "type": "webhook", "url": "https://hooks.example/x?token=abc"}),
     "alertmanager_receivers[2] (q): a secret would be written"),
    ("secret in options", receivers(
        {"name": "s", "type": "slack", "api_url_file": "/f", "options": {"api_url": "https://h/"}}),
     "options keys=['api_url']"),
    ("url_secret with Debian's 0.25", receivers(
        {"name": "hb", "type": "webhook", "url_secret": "https://hc.example/ping/uuid"}),
     "Alertmanager reads a webhook URL from a file only since 0.26"),
    ("bad duration", {"alertmanager_group_wait": "thirty seconds"},
     "alertmanager_group_wait=thirty seconds: needs a duration"),
    ("bad repeat interval", {"alertmanager_repeat_interval": "4 h"},
     "alertmanager_repeat_interval=4 h"),
    ("cluster peers without this host", {"alertmanager_cluster_peers": ["10.0.0.2:9094",
                                                                       "10.0.0.3:9094"]},
     "this host's 127.0.0.1:9094"),
    ("cluster peer not HOST:PORT", {"alertmanager_cluster_peers": ["127.0.0.1:9094", "http://b"]},
     "alertmanager_cluster_peers="),
    ("web and cluster on one port", {"alertmanager_cluster_port": 9093},
     "alertmanager_cluster_port=9093"),
    ("relative data folder", {"alertmanager_storage_path": "data"},
     "alertmanager_storage_path=data"),
    ("archive without checksum", {"alertmanager_install_method": "archive"},
     "alertmanager_archive_sha256 its archive's sha256 (64 lowercase hex digits"),
    ("bad group_by label", {"alertmanager_group_by": ["alert-name"]}, "alertmanager_group_by="),
    ("receivers not a list", {"alertmanager_receivers": "oncall"},
     "option 'alertmanager_receivers' is of type str"),
]  # fmt: skip


def test_alertmanager_validate_refuses_bad_options_naming_them(tmp_path: Path) -> None:
    out = check_validate_cases(
        "alertmanager", CASES, GOOD, tmp_path, inventory=INVENTORY, argument_spec=True
    )
    for secret in ["a-secret-routing-key", "pw-value", "u:secret@"]:
        assert secret not in out, secret
