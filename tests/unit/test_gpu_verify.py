"""`make gpu-verify` (playbooks/gpu_verify.yml): what vLLM's first start needs, per machine.

This machine has no NVIDIA GPU: the real run must say so and exit 0. The GPU machines are
STAND-INS, named as such (no GPU exists here): a PCI tree in sysfs layout built from the
recorded `lspci -Dnn` fixtures, a FAKE nvidia-smi (a shell script printing nvidia-smi's
formats: the CSV query, the summary header, the `-q` report's Fabric blocks), a FAKE
systemctl and mokutil, a FAKE CUDA probe printing what roles/vllm/files/cuda_init_probe.py
prints, and FAKE interpreters printing what the vllm role's probe asks (version, Python.h,
include folder). All cases run in one ansible-playbook run, one inventory host each, and
each writes its report (-e gpu_verify_report); the tests read the failed checks' names and
words. The filters and the real CUDA probe's ctypes logic are also driven directly.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from conftest import REPO, run_ansible_playbook

PLAYBOOK = str(REPO / "playbooks" / "gpu_verify.yml")
LSPCI = REPO / "tests" / "unit" / "fixtures" / "nvidia" / "lspci"


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FILTERS = load(REPO / "playbooks" / "filter_plugins" / "gpu_verify.py", "gpu_verify_filters")
PROBE = load(REPO / "roles" / "vllm" / "files" / "cuda_init_probe.py", "cuda_init_probe")


def smi_q(bus_ids: list[str], state: str, status: str) -> str:
    """A FAKE `nvidia-smi -q` in its layout (driver 580), trimmed to the fields around Fabric."""
    out = ["", "==============NVSMI LOG==============", "",
           "Timestamp                                 : Mon Dec  8 10:00:00 2026",
           "Driver Version                            : 580.95.05",
           "CUDA Version                              : 13.0", "",
           f"Attached GPUs                             : {len(bus_ids)}"]  # fmt: skip
    for bus in bus_ids:
        out += [f"GPU {bus}",
                "    Product Name                          : NVIDIA H100 80GB HBM3",
                "    Persistence Mode                      : Enabled",
                "    Fabric",
                f"        State                             : {state}",
                f"        Status                            : {status}",
                "        CliqueId                          : 0",
                "        ClusterUUID                       : 00000000-0000-0000-0000-000000000000",
                "        Health",
                "            Bandwidth                     : Full",
                "    Inforom Version",
                "        Image Version                     : G520.0200.00.05"]  # fmt: skip
    return "\n".join(out) + "\n"


def pci_tree(root: Path, fixture: str) -> list[str]:
    """sysfs files (vendor, class, device) from a recorded lspci -Dnn; the GPUs' bus ids."""
    gpus = []
    for line in (LSPCI / fixture).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        slot = line.split()[0]
        cls = line.split("[", 1)[1][:4]
        m = re.search(r"\[([0-9a-f]{4}):([0-9a-f]{4})\]", line)
        assert m, line
        vendor, device = m[1], m[2]
        dev = root / slot
        dev.mkdir(parents=True)
        (dev / "vendor").write_text(f"0x{vendor}\n")
        (dev / "class").write_text(f"0x{cls}00\n")
        (dev / "device").write_text(f"0x{device}\n")
        if cls.startswith("03"):
            gpus.append(f"0000{slot}")
    return gpus


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n# FAKE, a stand-in (no GPU here)\n" + body)
    path.chmod(0o755)
    return str(path)


HEALTHY_PROBE = '{"ok": true, "library": "libcuda.so.1", "cuInit": 0, "error": "", "driver_cuda": "13.0", "devices": 8}'  # noqa: E501
# name -> what differs from a healthy HGX H100 on driver 580 (Ubuntu 24.04, Python 3.12 with
# its headers, fabric Completed, fabric manager active, persistence on, uvm node present).
CASES: dict[str, dict[str, Any]] = {
    "healthy-hgx-h100": {},
    "pcie-h200-580": {"lspci": "pcie_h100.txt"},
    "fabric-in-progress": {"fabric": ("In Progress", "N/A")},
    "fabric-manager-inactive": {"fm": "inactive"},
    "persistence-off": {"persistence": "Disabled"},
    "no-uvm-node": {"uvm": False},
    "cuinit-failing": {"probe": ('{"ok": false, "library": "libcuda.so.1", "cuInit": 802,'
                                 ' "error": "CUDA_ERROR_SYSTEM_NOT_READY", "driver_cuda": "13.0",'
                                 ' "hint": "system not yet initialized"}', 1)},
    "python-h-missing": {"python": "3.12.3 no /usr/include/python3.12"},
    "branch-570": {"driver": "570.172.08", "cuda": "12.8"},
    "no-compiler": {"compilers": ["no-such-cc"]},
    "smi-hangs": {"smi_hangs": True},
    "secure-boot-module-refused": {"secure_boot": "SecureBoot enabled", "proc": False,
                                   "smi_fails": True},
}
# name -> the checks that must fail (all others pass).
FAILED = {
    "healthy-hgx-h100": set(),
    "pcie-h200-580": set(),
    "fabric-in-progress": {"fabric"},
    "fabric-manager-inactive": {"fabric"},
    "persistence-off": {"persistence mode"},
    "no-uvm-node": {"/dev/nvidia-uvm"},
    "cuinit-failing": {"CUDA init"},
    "python-h-missing": {"Python.h"},
    "branch-570": {"driver branch"},
    "no-compiler": {"C compiler"},
    "smi-hangs": {"nvidia-smi", "driver branch", "fabric"},
    "secure-boot-module-refused": {"nvidia-smi", "driver branch", "fabric", "Secure Boot"},
}


def host_vars(tmp: Path, name: str, case: dict[str, Any]) -> dict[str, Any]:
    d = tmp / name
    d.mkdir()
    gpus = pci_tree(d / "pci", case.get("lspci", "hgx_h100.txt"))
    driver = case.get("driver", "580.95.05")
    rows = "".join(f"{i}, NVIDIA H100 80GB HBM3, {driver}, {case.get('persistence', 'Enabled')},"
                   f" 81559 MiB\\n" for i in range(len(gpus)))  # fmt: skip
    (d / "q.txt").write_text(smi_q(gpus, *case.get("fabric", ("Completed", "Success"))))
    if case.get("smi_hangs"):
        smi_body = "sleep 30\n"
    elif case.get("smi_fails"):
        smi_body = ('echo "NVIDIA-SMI has failed because it couldn\'t communicate with the'
                    ' NVIDIA driver. Make sure that the latest NVIDIA driver is installed and'
                    ' running."\nexit 9\n')  # fmt: skip
    else:
        smi_body = (f'case "$*" in *--query-gpu*) printf "{rows}";;\n'
                    f'  -q) cat {d / "q.txt"};;\n'
                    f'  *) echo "| NVIDIA-SMI {driver}  Driver Version: {driver}  CUDA Version:'
                    f' {case.get("cuda", "13.0")} |";;\nesac\n')  # fmt: skip
    out, rc = case.get("probe", (HEALTHY_PROBE, 0))
    (d / "probe.json").write_text(out + "\n")
    proc = d / "proc-version"
    if case.get("proc", True):
        proc.write_text(f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {driver}"
                        "  Release Build  (dvs-builder@U16-I3-B03-4-3)"
                        "  Thu Oct  2 2026\n")  # fmt: skip
    (d / "os-release").write_text('ID=ubuntu\nVERSION_ID="24.04"\n')
    return {
        "__nvidia_driver_pci_root": str(d / "pci"),
        "__nvidia_driver_product_file": str(d / "none"),
        "gpu_verify_smi": script(d / "nvidia-smi", smi_body),
        "gpu_verify_smi_timeout": 1 if case.get("smi_hangs") else 20,
        "gpu_verify_systemctl": script(d / "systemctl", f"echo {case.get('fm', 'active')}\n"),
        "gpu_verify_mokutil": script(d / "mokutil",
                                     f"echo {case.get('secure_boot', 'SecureBoot disabled')}\n"),
        "gpu_verify_uvm_node": "/dev/null" if case.get("uvm", True) else str(d / "nvidia-uvm"),
        "gpu_verify_proc_version": str(proc),
        "gpu_verify_compilers": case.get("compilers", ["gcc", "cc"]),
        "gpu_verify_cuda_probe": [script(d / "probe", f"cat {d / 'probe.json'}\nexit {rc}\n")],
        "gpu_verify_report": str(d / "report.json"),
        "__vllm_os_release": str(d / "os-release"),
        "__vllm_python_system": script(
            d / "python3", f"echo '{case.get('python', '3.12.3 yes /usr/include/python3.12')}'\n"),
    }


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("gpu_verify")
    hosts = {name: {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                    "stand_in": host_vars(tmp, name, case)} for name, case in CASES.items()}
    (tmp / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {"cases": {
        "hosts": hosts}}}}))  # fmt: skip
    # The stand-ins replace play and role variables (which outrank inventory variables):
    # set as facts first, then the real playbook.
    (tmp / "play.yml").write_text(yaml.safe_dump([
        {"name": "Stand-ins", "hosts": "cases", "gather_facts": False, "tasks": [
            {"name": "Set them", "loop": "{{ stand_in | dict2items }}",
             "ansible.builtin.set_fact": {"{{ item.key }}": "{{ item.value }}"}}]},
        {"name": "gpu-verify", "ansible.builtin.import_playbook": PLAYBOOK},
    ], sort_keys=False))  # fmt: skip
    proc = run_ansible_playbook(["-i", str(tmp / "hosts.yml"), "-e", "gpu_verify_hosts=cases",
                                 str(tmp / "play.yml")], tmp)  # fmt: skip
    out: dict[str, Any] = {"_stdout": proc.stdout, "_rc": proc.returncode}
    for name in CASES:
        report = tmp / name / "report.json"
        assert report.exists(), f"{name}: no report\n{proc.stdout[-4000:]}"
        out[name] = json.loads(report.read_text())
    return out


def failed(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"] if not c["ok"]}


def test_make_gpu_verify_on_this_machine_says_no_gpu_and_succeeds() -> None:
    nvidia = [p for p in Path("/sys/bus/pci/devices").glob("*/vendor")
              if p.read_text().strip() == "0x10de"]  # fmt: skip
    assert not nvidia, "this test needs a machine without an NVIDIA PCI device"
    proc = subprocess.run(["make", "-s", "gpu-verify"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gpu-verify: no NVIDIA GPU on this machine" in proc.stdout


@pytest.mark.parametrize("case", CASES)
def test_each_case_fails_exactly_the_checks_it_should(reports: dict[str, Any], case: str) -> None:
    report = reports[case]
    assert report["gpu"] is True
    assert set(failed(report)) == FAILED[case], json.dumps(report["checks"], indent=1)
    assert report["ok"] is (not FAILED[case])
    # Every check that fails says what fixes it.
    assert all(c["fix"] for c in failed(report).values())


def test_the_play_fails_when_a_check_fails_and_names_it(reports: dict[str, Any]) -> None:
    out = " ".join(reports["_stdout"].split())
    assert reports["_rc"] != 0
    assert ("fatal: [no-uvm-node]: FAILED! => changed=false assertion: gpu_verify_failed | length"
            in out or "gpu-verify: vLLM 0.32.0 cannot start on this machine's GPUs yet:"
            " /dev/nvidia-uvm failed" in out)  # fmt: skip
    assert "cannot start on this machine's GPUs yet: /dev/nvidia-uvm failed" in out
    assert "fatal: [healthy-hgx-h100]" not in out


def test_healthy_hgx_reports_every_check(reports: dict[str, Any]) -> None:
    checks = {c["name"]: c["detail"] for c in reports["healthy-hgx-h100"]["checks"]}
    assert list(checks) == ["nvidia-smi", "GPUs", "kernel module", "driver branch", "fabric",
                            "/dev/nvidia-uvm", "persistence mode", "Secure Boot", "CUDA init",
                            "vLLM's Python", "Python.h", "C compiler"]  # fmt: skip
    assert checks["nvidia-smi"] == "driver 580.95.05, CUDA 13.0"
    assert checks["GPUs"].startswith("8 listed by nvidia-smi, 8 on the PCI bus")
    assert checks["kernel module"] == "loaded 580.95.05, libraries 580.95.05"
    assert "4 NVSwitch(es) on the PCI bus" in checks["fabric"]
    assert ("nvidia-fabricmanager active; fabric state of 8 GPU(s): all Completed"
            in checks["fabric"])
    assert checks["CUDA init"] == "cuInit 0, 8 device(s), driver CUDA 13.0"
    assert checks["Python.h"].startswith("/usr/include/python3.12/Python.h present")
    assert checks["Secure Boot"] == "SecureBoot disabled"


def test_pcie_host_needs_no_fabric(reports: dict[str, Any]) -> None:
    fabric = next(c for c in reports["pcie-h200-580"]["checks"] if c["name"] == "fabric")
    assert fabric["ok"] and "no fabric manager needed" in fabric["detail"]


def test_failures_say_what_is_wrong_and_what_fixes_it(reports: dict[str, Any]) -> None:
    f = {case: failed(reports[case]) for case in FAILED}
    assert "0000:18:00.0 In Progress/N/A" in f["fabric-in-progress"]["fabric"]["detail"]
    assert "error 802" in f["fabric-in-progress"]["fabric"]["fix"]
    assert "nvidia-fabricmanager inactive" in f["fabric-manager-inactive"]["fabric"]["detail"]
    assert f["persistence-off"]["persistence mode"]["detail"] == "off on GPU 0, 1, 2, 3, 4, 5, 6, 7"
    assert "nvidia-smi -pm 1" in f["persistence-off"]["persistence mode"]["fix"]
    assert f["no-uvm-node"]["/dev/nvidia-uvm"]["detail"].startswith("missing")
    assert "nvidia-uvm-init" in f["no-uvm-node"]["/dev/nvidia-uvm"]["fix"]
    assert f["cuinit-failing"]["CUDA init"]["detail"] == (
        "CUDA_ERROR_SYSTEM_NOT_READY: system not yet initialized")
    header = f["python-h-missing"]["Python.h"]
    assert header["detail"].startswith("/usr/include/python3.12/Python.h missing")
    assert header["fix"].startswith("apt-get install python3.12-dev")
    branch = " ".join(f["branch-570"]["driver branch"]["detail"].split())
    assert ("NVIDIA driver branch 570 (running, nvidia-smi) is too old for vLLM 0.32.0, whose"
            " torch 2.13.0 is a CUDA 13 build") in branch
    assert f["no-compiler"]["C compiler"]["detail"] == "no gcc or clang on PATH"
    assert f["smi-hangs"]["nvidia-smi"]["detail"] == "nvidia-smi did not answer within 1 s"
    refused = f["secure-boot-module-refused"]
    assert "couldn't communicate with the NVIDIA driver" in refused["nvidia-smi"]["detail"]
    assert "enrolled MOK" in refused["Secure Boot"]["fix"]


# --- the filters and the probe, driven directly ------------------------------------------------


def test_fabric_parser_reads_each_gpus_state_and_status() -> None:
    text = smi_q(["00000000:18:00.0", "00000000:2a:00.0"], "In Progress", "N/A")
    assert FILTERS.gpu_verify_fabric(text) == [
        {"gpu": "00000000:18:00.0", "state": "In Progress", "status": "N/A"},
        {"gpu": "00000000:2a:00.0", "state": "In Progress", "status": "N/A"}]  # fmt: skip
    # The Health block's own fields and the next section do not leak into the fabric's.
    assert FILTERS.gpu_verify_fabric("GPU 00000000:18:00.0\n    Fabric\n        State : N/A\n"
                                     "    Inforom Version\n        Status : x\n") == [
        {"gpu": "00000000:18:00.0", "state": "N/A", "status": ""}]  # fmt: skip


class FakeLibcuda:
    """FAKE libcuda (no GPU here): answers the four calls the probe makes."""

    def __init__(self, init: int, devices: int = 8) -> None:
        self.init, self.devices = init, devices

    def cuInit(self, flags: int) -> int:
        return self.init

    def cuDriverGetVersion(self, out: Any) -> int:
        out._obj.value = 13000
        return 0

    def cuDeviceGetCount(self, out: Any) -> int:
        out._obj.value = self.devices
        return 0

    def cuGetErrorName(self, code: int, out: Any) -> int:
        out._obj.value = {802: b"CUDA_ERROR_SYSTEM_NOT_READY"}.get(code, b"CUDA_ERROR_UNKNOWN")
        return 0


def test_cuda_probe_logic_with_a_fake_libcuda() -> None:
    assert PROBE.probe(FakeLibcuda(0)) == {"ok": True, "cuInit": 0, "error": "",
                                           "driver_cuda": "13.0", "devices": 8}  # fmt: skip
    failing = PROBE.probe(FakeLibcuda(802))
    assert failing["ok"] is False and failing["error"] == "CUDA_ERROR_SYSTEM_NOT_READY"
    assert "fabric manager" in failing["hint"]
    assert PROBE.probe(FakeLibcuda(0, devices=0))["ok"] is False


def test_cuda_probe_on_this_machine_finds_no_libcuda() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "roles/vllm/files/cuda_init_probe.py")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2, proc.stdout
    assert json.loads(proc.stdout)["error"].startswith("cannot load libcuda.so.1")
