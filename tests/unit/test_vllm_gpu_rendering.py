"""What the GPU path renders, in one real ansible-playbook run on localhost: the vLLM GPU
unit and the /dev/nvidia-uvm oneshot, DCGM's package list, and Prometheus's gpu targets.

Stand-ins, named as such: nvidia-smi's output (CUDA major, compute capabilities) is recorded
text (no GPU here), and the driver role's GPU detection on a GPU host is its published fact
set by hand. The CPU worker with vllm_device auto is real: the vllm role's preflight scans
this machine's PCI bus (no NVIDIA GPU) and publishes vllm_device_resolved. The units are
started only on real GPU hosts; the Molecule scenario measures the GPU unit's exposure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, run_ansible_playbook

ROLES = REPO / "roles"
INSTANCE = {"name": "big", "port": 8000, "model": "meta-llama/Llama-3.1-70B-Instruct",
            "gpus": [0, 1, 2, 3], "args": {"tensor-parallel-size": 4}}  # fmt: skip

# name -> (exporter options, recorded `nvidia-smi -q | sed` CUDA major + compute_cap lines)
DCGM_CASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "hgx-h200-580": ({}, ["13"] + ["9.0"] * 8),
    "a100-570": ({}, ["12", "8.0", "8.0"]),
    "l40s-ada-580": ({}, ["13", "8.9"]),
    "explicit-12-proprietary": ({"nvidia_gpu_exporter_dcgm_cuda_major": "12",
                                 "nvidia_gpu_exporter_dcgm_proprietary": True}, []),
    "none": ({"nvidia_gpu_exporter_dcgm_cuda_major": "none",
              "nvidia_gpu_exporter_dcgm_proprietary": "false"}, []),
}
CORE = "datacenter-gpu-manager-4-core=1:4.5.3-1"
EXPORTER = "datacenter-gpu-manager-exporter=4.8.2-1"
DCGM_EXPECTED = {
    "hgx-h200-580": [CORE, "datacenter-gpu-manager-4-cuda13=1:4.5.3-1", EXPORTER],
    "a100-570": [CORE, "datacenter-gpu-manager-4-cuda12=1:4.5.3-1",
                 "datacenter-gpu-manager-4-proprietary=1:4.5.3-1",
                 "datacenter-gpu-manager-4-proprietary-cuda12=1:4.5.3-1", EXPORTER],
    "l40s-ada-580": [CORE, "datacenter-gpu-manager-4-cuda13=1:4.5.3-1", EXPORTER],
    "explicit-12-proprietary": [CORE, "datacenter-gpu-manager-4-cuda12=1:4.5.3-1",
                                "datacenter-gpu-manager-4-proprietary=1:4.5.3-1",
                                "datacenter-gpu-manager-4-proprietary-cuda12=1:4.5.3-1",
                                EXPORTER],
    "none": [CORE, EXPORTER],
}  # fmt: skip

# Workers: inventory variables, and facts set by hand standing in for the nvidia_driver
# role's detection on a host with (or without) an NVIDIA GPU.
WORKERS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "w-cpu-auto": ({}, {}),  # the vllm preflight runs on it for real
    "w-cpu-explicit": ({"vllm_device": "cpu"}, {}),
    "w-gpu-explicit": ({"vllm_device": "gpu"}, {}),
    "w-gpu-auto-driver": ({}, {"nvidia_driver_gpu_detected": True}),
    "w-cpu-auto-driver": ({}, {"nvidia_driver_gpu_detected": False}),
    "w-gpu-local-fact": ({"ansible_local": {"nvidia_driver": {"gpu_count": 8}}}, {}),
    "w-unseen": ({}, {}),  # no run has looked at it: stays a target
}
GPU_TARGETS = {"w-gpu-explicit", "w-gpu-auto-driver", "w-gpu-local-fact", "w-unseen"}


def unit(name: str) -> str:
    return f"lookup('ansible.builtin.template', '{ROLES}/vllm/templates/{name}')"


def plays(out: Path) -> list[dict[str, Any]]:
    local = {"ansible_connection": "local",
             "ansible_python_interpreter": "{{ ansible_playbook_python }}"}  # fmt: skip
    vllm_vars = [str(ROLES / "vllm" / "defaults" / "main.yml"),
                 str(ROLES / "vllm" / "vars" / "main.yml")]  # fmt: skip
    exporter_vars = [str(ROLES / "nvidia_gpu_exporter" / "defaults" / "main.yml"),
                     str(ROLES / "nvidia_gpu_exporter" / "vars" / "main.yml")]  # fmt: skip
    units = {
        "gpu_fm": {"__vllm_device": "gpu", "nvidia_driver_fabricmanager_enabled": True},
        "gpu": {"__vllm_device": "gpu"},
        "cpu": {"__vllm_device": "cpu"},
    }
    render_tasks: list[dict[str, Any]] = [
        {"name": f"Render the {name} unit", "vars": {"item": INSTANCE, **v},
         "ansible.builtin.set_fact": {f"unit_{name}": "{{ " + unit("vllm.service.j2") + " }}"}}
        for name, v in units.items()
    ]  # fmt: skip
    render_tasks.append({"name": "Render the uvm oneshot", "ansible.builtin.set_fact": {
        "uvm_unit": "{{ " + unit("nvidia-uvm-init.service.j2") + " }}"}})  # fmt: skip
    for name, (options, smi) in DCGM_CASES.items():
        render_tasks.append({
            "name": f"DCGM packages, {name}",
            "vars": {**options, "__nvidia_gpu_exporter_smi": {"stdout_lines": smi,
                                                              "stdout": "\n".join(smi)}},
            "ansible.builtin.set_fact": {"dcgm": "{{ dcgm | combine({" + repr(name)
                                                 + ": __nvidia_gpu_exporter_packages}) }}"},
        })  # fmt: skip
    return [
        {"name": "Workers: the vllm preflight, and stand-in driver facts", "hosts": "gpu_workers",
         "gather_facts": False, "vars": local, "tasks": [
             {"name": "Set the stand-in facts of the driver role's detection",
              "ansible.builtin.set_fact": {
                  "nvidia_driver_gpu_detected": "{{ stand_in_facts.nvidia_driver_gpu_detected }}"},
              "when": "stand_in_facts.nvidia_driver_gpu_detected is defined"},
             # Only its decision of the device matters here (published first).
             {"name": "Run the vllm role's preflight on the CPU worker",
              "when": "inventory_hostname == 'w-cpu-auto'",
              "block": [{"name": "Preflight", "ansible.builtin.include_role": {
                  "name": "vllm", "tasks_from": "validate"}}],
              "rescue": [{"name": "Go on", "ansible.builtin.debug": {
                  "msg": "{{ ansible_failed_result.msg }}"}}]},
         ]},
        {"name": "Render", "hosts": "mon", "gather_facts": False,
         "vars": {**local, "dcgm": {}}, "vars_files": vllm_vars + exporter_vars + [
             str(ROLES / "prometheus" / "defaults" / "main.yml")],
         "tasks": [*render_tasks,
                   {"name": "Write what the tests read", "ansible.builtin.copy": {
                       "dest": str(out), "mode": "0600",
                       "content": "{{ {'units': {'gpu_fm': unit_gpu_fm, 'gpu': unit_gpu,"
                                  " 'cpu': unit_cpu, 'uvm': uvm_unit}, 'dcgm': dcgm,"
                                  " 'targets': " + "lookup('ansible.builtin.template', '"
                                  + str(ROLES / "prometheus" / "templates" / "targets.j2")
                                  + "') | from_json, 'resolved': hostvars['w-cpu-auto']"
                                  ".vllm_device_resolved} | to_json }}"}}]},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    nvidia = [p for p in Path("/sys/bus/pci/devices").glob("*/vendor")
              if p.read_text().strip() == "0x10de"]  # fmt: skip
    assert not nvidia, "this test's CPU worker needs a machine without an NVIDIA PCI device"
    tmp = tmp_path_factory.mktemp("vllm_gpu_rendering")
    workers = {host: {**hostvars, "stand_in_facts": facts, "vllm_instances": [
        {"name": "main", "port": 8000, "model": "m"}]}
        for host, (hostvars, facts) in WORKERS.items()}  # fmt: skip
    inventory = {"all": {"children": {"gpu_workers": {"hosts": workers},
                                      "monitoring": {"hosts": {"mon": {}}}}}}  # fmt: skip
    (tmp / "hosts.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    out = tmp / "out.json"
    (tmp / "play.yml").write_text(yaml.safe_dump(plays(out), sort_keys=False))
    proc = run_ansible_playbook(["-i", str(tmp / "hosts.yml"), str(tmp / "play.yml")], tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_gpu_unit_orders_after_the_fabric_manager_and_the_uvm_oneshot(
    rendered: dict[str, Any],
) -> None:
    unit = lines(rendered["units"]["gpu_fm"])
    head = unit[: unit.index("[Service]")]
    assert "Requires=nvidia-uvm-init.service" in head
    assert "After=nvidia-uvm-init.service" in head
    assert "Wants=nvidia-fabricmanager.service" in head
    assert "After=nvidia-fabricmanager.service" in head
    assert "After=nvidia-persistenced.service" in head
    # Without NVSwitches (no fabric manager): no dependency on it, the uvm oneshot still.
    plain = lines(rendered["units"]["gpu"])
    assert not [line for line in plain if "fabricmanager" in line]
    assert "Requires=nvidia-uvm-init.service" in plain


def test_gpu_unit_allows_the_uvm_device_by_major_and_orders_cuda_by_pci_bus(
    rendered: dict[str, Any],
) -> None:
    unit = lines(rendered["units"]["gpu"])
    assert "DeviceAllow=char-nvidia-uvm rw" in unit
    assert "DeviceAllow=/dev/nvidia-uvm rw" in unit
    assert "DevicePolicy=closed" in unit and "PrivateDevices=yes" not in unit
    assert 'Environment="CUDA_DEVICE_ORDER=PCI_BUS_ID"' in unit
    assert 'Environment="CUDA_VISIBLE_DEVICES=0,1,2,3"' in unit


def test_cpu_unit_has_none_of_the_gpu_lines(rendered: dict[str, Any]) -> None:
    text = rendered["units"]["cpu"]
    for word in ("nvidia", "CUDA_DEVICE_ORDER", "DeviceAllow"):
        assert word not in text, word
    assert "PrivateDevices=yes" in lines(text)


def test_uvm_oneshot_runs_the_script_as_root_once(rendered: dict[str, Any]) -> None:
    unit = lines(rendered["units"]["uvm"])
    assert "Type=oneshot" in unit and "RemainAfterExit=yes" in unit
    assert "ExecStart=/opt/vllm/bin/nvidia-uvm-init" in unit
    assert not [line for line in unit if line.startswith("User=")]  # root: modprobe, mknod
    script = (ROLES / "vllm" / "files" / "nvidia-uvm-init.sh").read_text()
    assert "modprobe nvidia-uvm" in script and 'mknod -m 0666 "$node" c "$major" "$minor"' in script


@pytest.mark.parametrize("case", DCGM_CASES)
def test_dcgm_packages_match_the_drivers_cuda_major_and_the_gpus(
    rendered: dict[str, Any], case: str
) -> None:
    assert rendered["dcgm"][case] == DCGM_EXPECTED[case]


def test_cpu_workers_get_no_gpu_target(rendered: dict[str, Any]) -> None:
    assert rendered["resolved"] == "cpu"  # auto on this machine, without an NVIDIA GPU
    targets = rendered["targets"]
    gpu_hosts = {group["labels"]["host"] for group in targets["gpu"]}
    assert gpu_hosts == GPU_TARGETS
    assert {t for group in targets["gpu"] for t in group["targets"]} == {
        f"{host}:9400" for host in GPU_TARGETS}  # fmt: skip
    # Every worker still has its vLLM and node targets.
    assert {g["labels"]["host"] for g in targets["vllm"]} == set(WORKERS)
    assert {g["labels"]["host"] for g in targets["node"]} == set(WORKERS) | {"mon"}
