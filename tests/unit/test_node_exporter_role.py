"""The node_exporter role's option checks and its two units, in one real ansible-playbook run.

No lab: the role's validate.yml runs on localhost for each case (a bad option must stop the
run naming the variable; good ones must pass), and the archive method's unit is rendered by
Ansible from the role's templates. What it proves: the checks and messages, the flags and the
service name each method uses, that the archive unit carries every hardening directive of the
package method's drop-in (one template, included by both). The units running on real hosts,
their exposure and the switch between methods are the Molecule scenarios' part.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, run_ansible_playbook

ROLE = REPO / "roles" / "node_exporter"
GOOD_SHA = "ab" * 32

CASES: dict[str, tuple[dict[str, Any], str | None]] = {
    "package-default": ({}, None),
    "package-ignores-archive-options": (
        {"node_exporter_archive_sha256": "junk", "node_exporter_version": "9.9.9"},
        None,
    ),
    "archive-known-version": ({"node_exporter_install_method": "archive"}, None),
    "archive-pinned": (
        {
            "node_exporter_install_method": "archive",
            "node_exporter_version": "1.8.2",
            "node_exporter_archive_sha256": GOOD_SHA.upper(),
        },
        None,
    ),
    "listen-address-without-host": (
        {"node_exporter_web_listen_address": "9100"},
        "node_exporter_web_listen_address=9100 is not HOST:PORT",
    ),
    "bad-method": (
        {"node_exporter_install_method": "tarball"},
        "node_exporter_install_method=tarball is neither package nor archive",
    ),
    "archive-unknown-version-without-sha256": (
        {"node_exporter_install_method": "archive", "node_exporter_version": "1.8.2"},
        "node_exporter_archive_sha256 is required with node_exporter_install_method=archive: "
        "the role knows upstream's checksum of node_exporter 1.5.0 only, not 1.8.2",
    ),
    "archive-ill-formed-sha256": (
        {"node_exporter_install_method": "archive", "node_exporter_archive_sha256": "abc123"},
        "node_exporter_archive_sha256=abc123 is not a sha256 (64 hex digits)",
    ),
    "archive-ill-formed-version": (
        {
            "node_exporter_install_method": "archive",
            "node_exporter_version": "latest",
            "node_exporter_archive_sha256": GOOD_SHA,
        },
        "node_exporter_version=latest is not a version like 1.5.0",
    ),
}


def template(name: str) -> str:
    """Jinja rendering one of the role's templates, as the role would."""
    return f"lookup('ansible.builtin.template', role ~ '/templates/{name}')"


def playbook(out: Path) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    for name, (variables, _) in CASES.items():
        tasks.append(
            {
                "name": f"Case {name}",
                "block": [
                    {
                        "name": "Run the role's checks",
                        "ansible.builtin.include_role": {
                            "name": "node_exporter",
                            "tasks_from": "validate",
                        },
                        "vars": variables,
                    },
                    {
                        "name": "Note it passed",
                        "ansible.builtin.set_fact": {
                            "results": "{{ results | combine({" + repr(name) + ": 'passed'}) }}"
                        },
                    },
                ],
                "rescue": [
                    {
                        "name": "Note the message",
                        "ansible.builtin.set_fact": {
                            "results": "{{ results | combine({"
                            + repr(name)
                            + ": ansible_failed_result.msg}) }}"
                        },
                    }
                ],
            }
        )
    tasks += [
        {
            "name": "Load the role's variables for the archive method",
            "ansible.builtin.include_role": {
                "name": "node_exporter",
                "tasks_from": "validate",
                "public": True,
            },
            "vars": {
                "node_exporter_install_method": "archive",
                "node_exporter_enabled_collectors": ["systemd", "processes"],
            },
        },
        {
            "name": "Write what the tests read",
            "ansible.builtin.copy": {
                "dest": str(out),
                "mode": "0600",
                "content": "{{ {'results': results, 'service': __node_exporter_service,"
                " 'other': __node_exporter_other_service, 'args': __node_exporter_args,"
                f" 'unit': {template('node_exporter.service.j2')},"
                f" 'dropin': {template('hardening.conf.j2')},"
                f" 'default': {template('default.j2')}}} | to_json }}}}",
            },
            "vars": {
                "node_exporter_install_method": "archive",
                "node_exporter_enabled_collectors": ["systemd", "processes"],
            },
        },
    ]
    return [
        {
            "name": "The node_exporter role's checks and templates",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {"results": {}, "role": str(ROLE)},
            "tasks": tasks,
        }
    ]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("node_exporter")
    out = tmp / "out.json"
    (tmp / "site.yml").write_text(yaml.safe_dump(playbook(out), sort_keys=False))
    proc = run_ansible_playbook([str(tmp / "site.yml")], tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data: dict[str, Any] = json.loads(out.read_text())
    return data


@pytest.mark.parametrize("case", CASES)
def test_option_checks(outcome: dict[str, Any], case: str) -> None:
    expected = CASES[case][1]
    got = outcome["results"][case]
    if expected is None:
        assert got == "passed"
    else:
        assert expected in got


def directives(text: str) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if "=" in line and not line.startswith("#") and not line.startswith("ARGS")
    ]


def test_archive_method_runs_its_own_unit_with_the_shared_flags(outcome: dict[str, Any]) -> None:
    assert outcome["service"] == "node_exporter"
    assert outcome["other"] == "prometheus-node-exporter"
    args = "--web.listen-address=0.0.0.0:9100 --collector.systemd --collector.processes"
    assert outcome["args"] == f"{args} --no-collector.timex"
    unit = outcome["unit"]
    assert f"ExecStart=/usr/local/bin/node_exporter {outcome['args']}\n" in unit
    assert "\nUser=node_exporter\nGroup=node_exporter\n" in unit
    assert unit.index("[Service]") < unit.index("NoNewPrivileges=yes") < unit.index("[Install]")
    # The package method's flags file carries the same flags.
    assert f'ARGS="{outcome["args"]}"' in outcome["default"]


def test_both_methods_share_every_hardening_directive(outcome: dict[str, Any]) -> None:
    hardening = directives(outcome["dropin"])
    assert len(hardening) > 25 and "ProtectSystem=strict" in hardening
    unit = directives(outcome["unit"])
    assert [d for d in hardening if d not in unit] == []
