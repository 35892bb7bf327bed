"""The nvidia_driver role's decisions per distribution, branch and source, rendered by Ansible.

Ubuntu 22.04/24.04 cannot run in the lab, so what the role would install there lives in its
vars/main.yml and templates; a real ansible-playbook renders them here with each
distribution's facts (and a recorded /proc/version) and the result is compared with the
expected files in fixtures/nvidia/expected, written by hand from the sources cited in the
role's vars (NVIDIA's 590 renames table and pinning packages, DeepOps' fabric-manager lists,
Debian's archive, dkms's MOK paths). Also the preflight's refusals of the new options.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, check_validate_cases, run_ansible_playbook

ROLE = REPO / "roles" / "nvidia_driver"
FIXTURES = Path(__file__).parent / "fixtures" / "nvidia"
PROC_VERSIONS = [
    row.rsplit("\t", 1)[0]
    for row in (FIXTURES / "proc-version.txt").read_text().splitlines()
    if not row.startswith("#")
]


def facts(distribution: str, version: str, release: str, kernel: str) -> dict[str, str]:
    return {
        "distribution": distribution,
        "distribution_version": version,
        "distribution_major_version": version.split(".")[0],
        "distribution_release": release,
        "kernel": kernel,
        "architecture": "x86_64",
    }


def proc_version(kernel: str) -> str:
    (line,) = [v for v in PROC_VERSIONS if f" {kernel} " in v]
    return line


NOBLE = facts("Ubuntu", "24.04", "noble", "6.8.0-45-generic")
# (case, facts, branch, source, open modules)
CASES: list[tuple[str, dict[str, str], str, str, bool]] = [
    ("ubuntu2404-580-cuda", NOBLE, "580", "cuda", True),
    ("ubuntu2404-595-cuda", NOBLE, "595", "cuda", True),
    ("ubuntu2404-580-distro", NOBLE, "580", "distro", True),
    (
        "ubuntu2204-580-cuda-hwe",
        facts("Ubuntu", "22.04", "jammy", "6.8.0-52-generic"),
        "580",
        "cuda",
        True,
    ),
    (
        "ubuntu2204-570-cuda-ga-proprietary",
        facts("Ubuntu", "22.04", "jammy", "5.15.0-91-generic"),
        "570",
        "cuda",
        False,
    ),
    (
        "ubuntu2204-595-cuda-aws",
        facts("Ubuntu", "22.04", "jammy", "6.8.0-1021-aws"),
        "595",
        "cuda",
        True,
    ),
    (
        "debian12-580-cuda",
        facts("Debian", "12.8", "bookworm", "6.1.0-28-amd64"),
        "580",
        "cuda",
        True,
    ),
    (
        "debian12-595-cuda-cloud",
        facts("Debian", "12.8", "bookworm", "6.1.0-28-cloud-amd64"),
        "595",
        "cuda",
        True,
    ),
    (
        "ubuntu2204-580-distro-aws",
        facts("Ubuntu", "22.04", "jammy", "6.8.0-1021-aws"),
        "580",
        "distro",
        True,
    ),
    (
        "debian12-535-distro",
        facts("Debian", "12.8", "bookworm", "6.1.0-28-amd64"),
        "535",
        "distro",
        True,
    ),
]

# A driver version of each branch, as the role resolves it on the host (tasks/packages_plan.yml):
# the fabric packages are rendered at exactly it.
VERSIONS = {"535": "535.261.03", "570": "570.195.03", "580": "580.95.05", "595": "595.45.04"}

DECISIONS = (
    "{{ results | combine({case: {'packages': __nvidia_driver_packages,"
    " 'pinning': __nvidia_driver_pinning_packages,"
    " 'fabricmanager': __nvidia_driver_fabricmanager_packages,"
    " 'nvlink5': __nvidia_driver_fabricmanager_packages,"
    " 'fabric_apt': __nvidia_driver_fabric_specs, 'modules': __nvidia_driver_modules,"
    " 'build': __nvidia_driver_build_packages, 'pin': __nvidia_driver_pin_version,"
    " 'repo': __nvidia_driver_cuda_repo,"
    " 'mok': [__nvidia_driver_mok_key, __nvidia_driver_mok_cert],"
    " 'persistenced_dropin': __nvidia_driver_persistenced_dropin,"
    " 'debian_components': __nvidia_driver_debian_components,"
    " 'pin_file': lookup('ansible.builtin.template', role ~ '/templates/apt-preferences.j2'),"
    " 'dropin': lookup('ansible.builtin.template',"
    " role ~ '/templates/persistenced-override.conf.j2')}})"
    "}}"
)


@pytest.fixture(scope="module")
def decisions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("nvidia_decisions")
    tasks = []
    for name, host, branch, source, open_modules in CASES:
        case_vars = {
            "ansible_facts": host,
            "nvidia_driver_branch": branch,
            "nvidia_driver_source": source,
            "nvidia_driver_open_kernel_modules": open_modules,
            "__nvidia_driver_proc_version": proc_version(host["kernel"]),
        }
        case_vars |= {
            "nvidia_driver_fabricmanager_enabled": True,
            "__nvidia_driver_resolved_version": VERSIONS[branch],
        }
        # nvlink5 False/True; and "precompiled": apt has Canonical's signed modules for the
        # running kernel (packages_plan.yml's finding), which only Ubuntu's distro source takes.
        for variant in ("False", "True", "precompiled"):
            tasks.append(
                {
                    "name": f"Render {name} {variant}",
                    "ansible.builtin.set_fact": {"results": DECISIONS},
                    "vars": {
                        **case_vars,
                        "nvidia_driver_nvlsm_enabled": variant == "True",
                        "__nvidia_driver_precompiled_available": variant == "precompiled",
                        "case": f"{name}-{variant}",
                    },
                }
            )
    # What the preflight publishes for the vllm role's checks that run after it.
    tasks += [
        {
            "name": "Run the preflight checks",
            "ansible.builtin.include_role": {"name": "nvidia_driver", "tasks_from": "validate"},
            "vars": {"nvidia_driver_branch": 595, "ansible_facts": NOBLE},
        },
        {
            "name": "Record the published facts",
            "ansible.builtin.set_fact": {
                "results": (
                    "{{ results | combine({'published': {'branch': nvidia_driver_branch_requested,"
                    " 'fabricmanager': nvidia_driver_fabricmanager_enabled,"
                    " 'nvlsm': nvidia_driver_nvlsm_enabled}}) }}"
                )
            },
        },
    ]
    tasks.append(
        {
            "name": "Write them",
            "ansible.builtin.copy": {
                "dest": str(tmp / "out.json"),
                "content": "{{ results | to_json }}",
                "mode": "0600",
            },
        }
    )
    play = [
        {
            "name": "The nvidia_driver role's decisions",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars_files": [str(ROLE / "defaults" / "main.yml"), str(ROLE / "vars" / "main.yml")],
            "vars": {"role": str(ROLE), "ansible_managed": "Ansible managed", "results": {}},
            "tasks": tasks,
        }
    ]
    (tmp / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    proc = run_ansible_playbook(
        [str(tmp / "play.yml")], tmp, ANSIBLE_FILTER_PLUGINS=str(ROLE / "filter_plugins")
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp / "out.json").read_text())
    out = {"published": results["published"]}
    for name, *_ in CASES:
        out[name] = {
            **results[f"{name}-False"],
            "nvlink5": results[f"{name}-True"]["fabricmanager"],
            "fabric_apt_nvlink5": results[f"{name}-True"]["fabric_apt"],
            "precompiled": {
                key: results[f"{name}-precompiled"][key] for key in ("modules", "packages", "build")
            },
        }
    return out


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_packages_pins_headers_and_paths_match_the_sources(
    decisions: dict[str, dict[str, Any]], case: str
) -> None:
    got = dict(decisions[case])
    pin_file, dropin = got.pop("pin_file"), got.pop("dropin")
    expected = json.loads((FIXTURES / "expected" / f"{case}.json").read_text())
    # Each file names the public sources its rows were written from (fixtures README).
    assert expected.pop("_sources")
    if "precompiled" not in expected:
        # Not Ubuntu's distro source: Canonical's modules are never taken, DKMS stays.
        expected["precompiled"] = {
            "modules": "dkms",
            "packages": expected["packages"],
            "build": expected["build"],
        }
    assert got == expected
    # The pin file apt reads: every driver package on the branch, above any repository.
    assert f"Pin: version {expected['pin']}\n" in pin_file
    assert "Package: nvidia-* libnvidia-* libcuda1*" in pin_file
    assert "Pin-Priority: 1001" in pin_file
    # Persistence mode on (NVIDIA's role's override): ExecStart emptied, then replaced.
    execs = [line for line in dropin.splitlines() if line.startswith("ExecStart=")]
    assert execs == [
        "ExecStart=",
        "ExecStart=/usr/bin/nvidia-persistenced --user nvidia-persistenced"
        " --persistence-mode --verbose",
    ]


def test_preflight_publishes_the_branch_as_a_string_and_no_fabric_manager_here(
    decisions: dict[str, dict[str, Any]],
) -> None:
    """The vllm role's preflight reads these; this machine has no NVSwitch (no GPU at all)."""
    assert decisions["published"] == {"branch": "595", "fabricmanager": False, "nvlsm": False}


def test_unversioned_ubuntu_names_only_from_590(decisions: dict[str, dict[str, Any]]) -> None:
    assert all("580" in p for p in decisions["ubuntu2404-580-cuda"]["packages"])
    assert not any(c.isdigit() for p in decisions["ubuntu2404-595-cuda"]["packages"] for c in p)


# --- the preflight's refusals (tasks/validate.yml on this machine: no GPU, no NVSwitch) -----

DEBIAN12 = facts("Debian", "12.8", "bookworm", "6.1.0-28-amd64")
GOOD = {"ansible_python_interpreter": "{{ ansible_playbook_python }}", "ansible_facts": DEBIAN12}
VALIDATE_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("defaults", {}, None),
    ("branch 595", {"nvidia_driver_branch": "595"}, None),
    ("fabric manager off", {"nvidia_driver_fabricmanager": False}, None),
    (
        "distro 535 on Debian 12",
        {"nvidia_driver_source": "distro", "nvidia_driver_branch": "535"},
        None,
    ),
    (
        "distro 580 on Ubuntu 24.04",
        {"nvidia_driver_source": "distro", "ansible_facts": NOBLE},
        None,
    ),
    ("branch not a number", {"nvidia_driver_branch": "latest"}, "nvidia_driver_branch=latest"),
    (
        "unknown branch",
        {"nvidia_driver_branch": "999"},
        "nvidia_driver_branch=999 is not a branch the role knows",
    ),
    (
        "distro 580 on Debian 12",
        {"nvidia_driver_source": "distro"},
        "nvidia_driver_branch=580 with nvidia_driver_source=distro",
    ),
    (
        "fabric manager forced without NVSwitch",
        {"nvidia_driver_fabricmanager": True},
        "nvidia_driver_fabricmanager=True on localhost, which has no NVSwitch",
    ),
    (
        "fabric manager misspelt",
        {"nvidia_driver_fabricmanager": "sometimes"},
        "nvidia_driver_fabricmanager=sometimes",
    ),
    (
        "headers with a version",
        {"nvidia_driver_kernel_headers_packages": ["linux-headers-amd64=6.1"]},
        "lists of Debian package names (no versions",
    ),
    ("relative MOK key", {"nvidia_driver_mok_key": "mok.key"}, "nvidia_driver_mok_key=mok.key"),
    (
        "version of another branch",
        {"nvidia_driver_version": "570.195.03-1"},
        "nvidia_driver_version=570.195.03-1 on localhost is not of nvidia_driver_branch=580",
    ),
    ("version of the branch", {"nvidia_driver_version": "580.95.05-1"}, None),
    # This machine's PCI bus has no NVIDIA GPU: any count set is refused, naming what it found.
    (
        "expected GPU count the PCI bus does not show",
        {"nvidia_driver_expected_gpu_count": 8},
        "nvidia_driver_expected_gpu_count=8 on localhost, but its PCI bus has 0 NVIDIA GPU(s)",
    ),
    (
        "kernel modules misspelt",
        {"nvidia_driver_kernel_modules": "signed"},
        "value of nvidia_driver_kernel_modules must be one of: auto, dkms, precompiled,"
        " got: signed",
    ),
    (
        "precompiled modules on Debian",
        {"nvidia_driver_kernel_modules": "precompiled"},
        "nvidia_driver_kernel_modules=precompiled on localhost (Debian, nvidia_driver_source=cuda,"
        " kernel 6.1.0-28-amd64, flavour amd64)",
    ),
    (
        "precompiled modules with NVIDIA's repository on Ubuntu",
        {"nvidia_driver_kernel_modules": "precompiled", "ansible_facts": NOBLE},
        "nvidia_driver_kernel_modules=precompiled on localhost (Ubuntu, nvidia_driver_source=cuda,",
    ),
    (
        "precompiled modules for a flavour Canonical builds none for",
        {
            "nvidia_driver_kernel_modules": "precompiled",
            "nvidia_driver_source": "distro",
            "ansible_facts": facts("Ubuntu", "24.04", "noble", "6.8.0-1012-kvm"),
        },
        "kernel 6.8.0-1012-kvm, flavour kvm): Canonical's signed modules exist only on Ubuntu",
    ),
    (
        "precompiled modules on Ubuntu's distro source, generic kernel",
        {
            "nvidia_driver_kernel_modules": "precompiled",
            "nvidia_driver_source": "distro",
            "ansible_facts": NOBLE,
        },
        None,
    ),
    (
        "fabric wait too short",
        {"nvidia_driver_fabric_ready_timeout": 5},
        "nvidia_driver_fabric_ready_timeout=5 (seconds, 10 or more)",
    ),
]


def test_preflight_refuses_bad_nvidia_driver_options(tmp_path: Path) -> None:
    check_validate_cases("nvidia_driver", VALIDATE_CASES, GOOD, tmp_path, argument_spec=True)
