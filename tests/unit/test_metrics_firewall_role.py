"""The metrics_firewall role's checks refuse bad options naming them (no lab)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import check_validate_cases

INVENTORY: dict[str, Any] = {"all": {"children": {
    "monitoring": {"hosts": {"localhost": {"ansible_connection": "local",
                                           "ansible_host": "127.0.0.1"}}},
    "unreachable": {"hosts": {"mon-without-address": {}}},
    "gateways": {"hosts": {"gw1": {"ansible_host": "192.0.2.20"}}},
    "gateways_unaddressed": {"hosts": {"gw-without-address": {}}},
}}}  # fmt: skip
SOURCES = ["10.0.0.0/8", "fd00::/8", "192.0.2.7"]
CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("off", {}, None),
    ("on, sources and ports", {"metrics_firewall_enabled": True,
                               "metrics_firewall_allowed_sources": SOURCES,
                               "metrics_firewall_extra_ports": [9835]}, None),
    ("a host name as source", {"metrics_firewall_allowed_sources": ["ops.example.com"]},
     "metrics_firewall_allowed_sources: ops.example.com is not an IP address or CIDR"),
    ("port out of range", {"metrics_firewall_extra_ports": [70000]},
     "metrics_firewall_extra_ports: 70000 is not a TCP port"),
    ("monitoring host without address", {"metrics_firewall_enabled": True,
                                         "metrics_firewall_monitoring_group": "unreachable"},
     "mon-without-address (group unreachable) has no ansible_host"),
    ("workers behind addressed gateways", {"metrics_firewall_enabled": True,
                                           "metrics_firewall_api_from_gateways_only": True}, None),
    ("gateway without address", {"metrics_firewall_enabled": True,
                                 "metrics_firewall_api_from_gateways_only": True,
                                 "metrics_firewall_gateway_group": "gateways_unaddressed"},
     "gw-without-address (group gateways_unaddressed) has no ansible_host"),
]  # fmt: skip


def test_metrics_firewall_validate_refuses_bad_options_naming_them(tmp_path: Path) -> None:
    check_validate_cases("metrics_firewall", CASES, {}, tmp_path, inventory=INVENTORY)
