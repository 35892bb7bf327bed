"""Reading the fleet from an inventory through the real ansible-inventory."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import write_inventory

from postcheck.fleet import UsageError, parse_duration, split_listen_address
from postcheck.inventory import find_tool, group_hosts, load_fleet


def test_inventory_defaults_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "gpu_workers.yml").write_text("vllm_api_key: from-group-vars\n")
    write_inventory(
        tmp_path,
        {
            "all": {
                "children": {
                    "gpu_workers": {
                        "children": {
                            "gpu_a100": {
                                "hosts": {
                                    "gpu1": {
                                        "ansible_host": "10.0.0.11",
                                        "vllm_instances": [
                                            {
                                                "name": "main",
                                                "port": 8000,
                                                "model": "/srv/models/llama",
                                            },
                                            {
                                                "name": "second",
                                                "port": "8001",
                                                "model": "/srv/m",
                                                "served_model_name": "small",
                                            },
                                        ],
                                    },
                                }
                            }
                        }
                    },
                    "cpu_workers": {
                        "hosts": {
                            "gpu2": {
                                "vllm_instances": [
                                    {"name": "x", "port": 8000, "served_model_name": ["a", "b"]}
                                ],
                                "node_exporter_web_listen_address": "192.168.1.2:9101",
                            },
                        }
                    },
                    "monitoring": {
                        "hosts": {
                            "mon1": {
                                "ansible_host": "10.0.0.2",
                                "prometheus_scrape_interval": "30s",
                            },
                            "mon2": {"ansible_host": "10.0.0.3"},
                        }
                    },
                }
            }
        },
    )
    # gpu2 is a worker too, through a second parent group
    (tmp_path / "more.yml").write_text(
        "all:\n  children:\n    gpu_workers:\n      hosts:\n        gpu2:\n"
    )

    fleet = load_fleet(str(tmp_path))

    labels = [(w.label, w.base_url, w.model, w.instance) for w in fleet.workers]
    assert ("gpu1/main", "http://10.0.0.11:8000", "/srv/models/llama", "10.0.0.11:8000") in labels
    assert ("gpu1/second", "http://10.0.0.11:8001", "small", "10.0.0.11:8001") in labels
    assert ("gpu2/x", "http://gpu2:8000", "a", "gpu2:8000") in labels  # no ansible_host: the name
    assert len(labels) == 3
    assert all(w.api_key == "from-group-vars" for w in fleet.workers)
    assert "from-group-vars" not in repr(fleet.workers)
    assert set(fleet.node_targets) == {
        "10.0.0.11:9100",
        "gpu2:9101",
        "10.0.0.2:9100",
        "10.0.0.3:9100",
    }
    assert (
        fleet.prometheus_url == "http://10.0.0.2:9090"
    )  # first monitoring host, 0.0.0.0 -> its address
    assert fleet.scrape_interval_s == 30


def test_inventory_vaulted_api_key_is_decrypted(tmp_path: Path) -> None:
    pw = tmp_path / "vault-pass"
    pw.write_text("test-password\n")
    enc = subprocess.run(
        [
            find_tool("ansible-vault"),
            "encrypt_string",
            "--vault-password-file",
            str(pw),
            "vaulted-key",
            "--name",
            "vllm_api_key",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    host_vars = tmp_path / "host_vars"
    host_vars.mkdir()
    (host_vars / "w1.yml").write_text(enc + "vllm_instances: [{name: a, port: 8000, model: m}]\n")
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  children:\n    gpu_workers:\n      hosts:\n        w1:\n")

    fleet = load_fleet(str(tmp_path), vault_password_file=str(pw))
    assert fleet.workers[0].api_key == "vaulted-key"
    assert fleet.prometheus_url is None and "monitoring" in fleet.prometheus_missing_reason

    with pytest.raises(UsageError, match="vault-encrypted"):
        load_fleet(str(tmp_path))  # no password: a clear error, never a prompt
    assert load_fleet(str(tmp_path), api_key_override="from-env").workers[0].api_key == "from-env"


@pytest.mark.parametrize(
    ("hostvars", "message"),
    [
        ({}, "has no vllm_instances"),
        ({"vllm_instances": [{"name": "a", "port": 0, "model": "m"}]}, "port 1..65535"),
        ({"vllm_instances": [{"name": "a", "port": 8000}]}, "neither served_model_name nor model"),
        ({"vllm_instances": "a"}, "non-empty list"),
        (
            {
                "ansible_host": "{{ lookup('env', 'IP') }}",
                "vllm_instances": [{"name": "a", "port": 1, "model": "m"}],
            },
            "Jinja template",
        ),
    ],
)
def test_inventory_errors_are_usage_errors(
    tmp_path: Path, hostvars: dict[str, object], message: str
) -> None:
    inv = write_inventory(
        tmp_path, {"all": {"children": {"gpu_workers": {"hosts": {"w": hostvars}}}}}
    )
    with pytest.raises(UsageError, match=message):
        load_fleet(str(inv))


def test_group_hosts_follows_children_without_loops() -> None:
    data = {
        "all": {"children": ["a", "b"]},
        "a": {"hosts": ["h1"], "children": ["b"]},
        "b": {"hosts": ["h2", "h1"], "children": ["a"]},
    }
    assert group_hosts(data, "all") == ["h1", "h2"]
    assert group_hosts(data, "missing") == []


def test_durations_and_listen_addresses() -> None:
    assert (
        parse_duration("15s") == 15
        and parse_duration("1m30s") == 90
        and parse_duration("500ms") == 0.5
    )
    assert parse_duration("2") == 2
    for bad in ("", "fast", "0s", "-1", "15 s"):
        with pytest.raises(UsageError):
            parse_duration(bad)
    assert split_listen_address("0.0.0.0:9090") == ("0.0.0.0", 9090)
    assert split_listen_address(":9100") == ("", 9100)
    assert split_listen_address("[::]:9100") == ("::", 9100)
    with pytest.raises(UsageError):
        split_listen_address("9100")
