"""A host whose vendor image already runs a driver of the branch ("left alone"): the role keeps
its driver, yet pins and holds it and, where NVSwitches are, installs the fabric manager and
NSCQ at exactly the loaded version (or stops, naming host, version and package).

The recorded facts: the HGX H100 PCI scan (fixtures/nvidia/lspci/hgx_h100.txt) and what
tasks/packages_read.yml prints there (fixtures/nvidia/packages/*.txt: dpkg, apt-cache policy,
apt-cache madison; assembled, as no NVIDIA host was available, see the fixtures README). The
decision is the role's own: its filter, and its tasks/packages_plan.yml run by ansible-playbook.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from conftest import REPO, run_ansible_playbook

ROLE = REPO / "roles" / "nvidia_driver"
FIXTURES = Path(__file__).parent / "fixtures" / "nvidia"
FM = ["nvidia-fabricmanager", "libnvidia-nscq"]
AT_95 = ["nvidia-fabricmanager=580.95.05-*", "libnvidia-nscq=580.95.05-*"]
HOLD = (
    "{{ {'plan': __nvidia_driver_plan, 'hold': ([] if __nvidia_driver_left_alone"
    " else __nvidia_driver_packages) + __nvidia_driver_plan.hold} | to_json }}"
)


def load() -> ModuleType:
    path = ROLE / "filter_plugins" / "nvidia_driver.py"
    spec = importlib.util.spec_from_file_location("nvidia_driver_filters", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


nv = load()


def state(name: str) -> str:
    return (FIXTURES / "packages" / f"{name}.txt").read_text()


def hgx_h100() -> dict[str, Any]:
    text = (FIXTURES / "lspci" / "hgx_h100.txt").read_text()
    return nv.nvidia_fabric(nv.nvidia_pci_devices(text))  # type: ignore[no-any-return]


def plan(name: str, loaded: str = "580.95.05", wanted: str = "", left_alone: bool = True) -> Any:
    return nv.nvidia_package_plan(
        state(name), "580", wanted, loaded, "nvidia-headless-580-open", FM, [], left_alone
    )


def test_preinstalled_580_without_fabric_manager_gets_it_at_the_loaded_version() -> None:
    assert hgx_h100()["fabricmanager"] is True
    got = plan("hgx_h100_580_no_fm")
    assert (got["version"], got["origin"]) == ("580.95.05", "loaded")
    # Not the repository's newest 580 (580.126.09) nor the newest branch (595).
    assert got["install"] == AT_95
    assert got["missing"] == []
    # Held: the fabric packages and every driver package installed at the loaded version,
    # not the removed 570 leftovers.
    assert got["hold"][:2] == FM
    assert "nvidia-headless-580-open" in got["hold"]
    assert "nvidia-dkms-580-open" in got["hold"]
    assert "nvidia-utils-570" not in got["hold"]


def test_preinstalled_580_with_a_fabric_manager_of_another_version_gets_it_replaced() -> None:
    got = plan("hgx_h100_580_other_fm")
    assert got["install"] == AT_95
    assert got["other_versions"] == [f"{name} 580.82.07-1" for name in FM]
    assert got["missing"] == []


def test_loaded_version_missing_from_the_repository_is_named() -> None:
    got = plan("hgx_h100_580_not_in_repo", loaded="580.65.06")
    assert got["version"] == "580.65.06"
    assert got["missing"] == FM


def test_a_fresh_host_follows_the_installed_then_the_candidate_driver() -> None:
    got = plan("hgx_h100_580_no_fm", loaded="", left_alone=False)
    assert (got["version"], got["origin"]) == ("580.95.05", "installed")
    assert got["hold"] == FM  # the driver's own packages are held by name in install.yml
    none_installed = state("hgx_h100_580_no_fm").replace("ii \t", "rc \t")
    fresh = nv.nvidia_package_plan(none_installed, "580", "", "", "nvidia-headless-580-open",
                                   FM, ["nvlsm"], False)  # fmt: skip
    assert (fresh["version"], fresh["origin"]) == ("580.126.09", "candidate")
    assert fresh["install"] == ["nvidia-fabricmanager=580.126.09-*", "libnvidia-nscq=580.126.09-*",
                                "nvlsm"]  # fmt: skip


def test_nvidia_driver_version_wins_and_loses_its_epoch_and_revision() -> None:
    got = plan("hgx_h100_580_no_fm", wanted="580.82.07-1", left_alone=False)
    assert (got["version"], got["origin"]) == ("580.82.07", "nvidia_driver_version")
    assert nv.nvidia_upstream_version("1:580.95.05-0ubuntu0.24.04.2") == "580.95.05"


# --- the role's tasks/packages_plan.yml on the recorded facts --------------------------------

NOBLE = {
    "distribution": "Ubuntu",
    "distribution_version": "24.04",
    "distribution_major_version": "24",
    "distribution_release": "noble",
    "kernel": "6.8.0-45-generic",
    "architecture": "x86_64",
}
CASES = ["hgx_h100_580_no_fm", "hgx_h100_580_other_fm", "hgx_h100_580_not_in_repo"]


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("left_alone")
    fabric = hgx_h100()
    plays = []
    for name in CASES:
        loaded = "580.65.06" if "not_in_repo" in name else "580.95.05"
        plays.append({
            "name": name, "hosts": "localhost", "connection": "local", "gather_facts": False,
            "vars_files": [str(ROLE / "defaults" / "main.yml"), str(ROLE / "vars" / "main.yml")],
            "vars": {
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                "ansible_facts": NOBLE, "nvidia_driver_fabric": fabric,
                "nvidia_driver_fabricmanager_enabled": fabric["fabricmanager"],
                "nvidia_driver_nvlsm_enabled": fabric["nvlsm"],
                "nvidia_driver_installed_version": loaded, "__nvidia_driver_left_alone": True,
                "__nvidia_driver_pkg_state": {"stdout": state(name)},
            },
            "tasks": [{"name": "Plan", "block": [
                {"name": "Run the role's plan", "ansible.builtin.include_role": {
                    "name": "nvidia_driver", "tasks_from": "packages_plan"}},
                {"name": "Write", "ansible.builtin.copy": {
                    "dest": str(tmp / f"{name}.json"), "mode": "0600",
                    "content": HOLD}},
            ], "rescue": [{"name": "Write the refusal", "ansible.builtin.copy": {
                "dest": str(tmp / f"{name}.json"), "mode": "0600",
                "content": "{{ {'refused': ansible_failed_result.msg} | to_json }}"}}]}],
        })  # fmt: skip
    (tmp / "play.yml").write_text(yaml.safe_dump(plays, sort_keys=False))
    proc = run_ansible_playbook(
        ["-i", "localhost,", str(tmp / "play.yml")], tmp,
        ANSIBLE_FILTER_PLUGINS=str(ROLE / "filter_plugins"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {name: json.loads((tmp / f"{name}.json").read_text()) for name in CASES}


def test_role_installs_and_holds_the_fabric_packages_at_the_loaded_version(
    ran: dict[str, Any],
) -> None:
    got = ran["hgx_h100_580_no_fm"]
    assert got["plan"]["install"] == AT_95
    assert "nvidia-fabricmanager" in got["hold"] and "nvidia-utils-580" in got["hold"]
    other = ran["hgx_h100_580_other_fm"]
    assert other["plan"]["install"] == got["plan"]["install"]


def test_role_stops_naming_host_loaded_version_and_package(ran: dict[str, Any]) -> None:
    msg = " ".join(ran["hgx_h100_580_not_in_repo"]["refused"].split())
    assert msg.startswith("localhost has NVSwitches (4 NVSwitch(es) on the PCI bus")
    assert "its NVIDIA driver is 580.65.06 (loaded now)" in msg
    assert "apt has no nvidia-fabricmanager=580.65.06-*, libnvidia-nscq=580.65.06-*" in msg
    assert "Nothing was installed" in msg
