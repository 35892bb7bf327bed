"""`make gpu-verify` (playbooks/gpu_verify.yml) on this machine, and on recorded GPU hosts.

This machine has no NVIDIA GPU: the real run must say so and exit 0. The GPU paths run the
same playbook against a recorded PCI tree (sysfs files: vendor, class, device) and a STAND-IN
nvidia-smi (a shell script printing what the real one prints), since no GPU exists here.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import REPO, run_ansible_playbook

PLAYBOOK = str(REPO / "playbooks" / "gpu_verify.yml")


def test_make_gpu_verify_on_this_machine_says_no_gpu_and_succeeds() -> None:
    proc = subprocess.run(["make", "-s", "gpu-verify"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gpu-verify: no NVIDIA GPU on this machine" in proc.stdout


def fake_host(tmp: Path, gpus: int, nvswitches: int, driver: str, cuda: str) -> list[str]:
    pci = tmp / "pci"
    for i in range(gpus + nvswitches):
        dev = pci / f"0000:{0x18 + i:02x}:00.0"
        dev.mkdir(parents=True)
        gpu = i < gpus
        (dev / "vendor").write_text("0x10de\n")
        (dev / "class").write_text("0x030200\n" if gpu else "0x068000\n")
        (dev / "device").write_text("0x2335\n" if gpu else "0x22a3\n")
    rows = "".join(f"{i}, NVIDIA H200, {driver}, Enabled, 143771 MiB\\n" for i in range(gpus))
    smi = tmp / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n# STAND-IN for nvidia-smi (no GPU here)\n"
        'case "$*" in *--query-gpu*) printf "' + rows + '";;\n'
        f'  *) echo "| NVIDIA-SMI {driver}  Driver Version: {driver}  CUDA Version: {cuda} |";;\n'
        "esac\n"
    )
    smi.chmod(0o755)
    return ["-e", f"__nvidia_driver_pci_root={pci}", "-e", f"gpu_verify_smi={smi}",
            "-e", f"__nvidia_driver_product_file={tmp / 'none'}"]  # fmt: skip


def run(tmp: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    return run_ansible_playbook([PLAYBOOK, *args], tmp)


def test_pcie_h200_on_580_satisfies_the_pinned_vllm(tmp_path: Path) -> None:
    proc = run(tmp_path, fake_host(tmp_path, 2, 0, "580.95.05", "13.0"))
    assert proc.returncode == 0, proc.stdout
    assert "GPUs: 2 on the PCI bus, 2 listed by nvidia-smi" in proc.stdout
    assert "CUDA version of the driver: 13.0" in proc.stdout
    assert "needs driver branch 580 or newer: SATISFIED" in " ".join(proc.stdout.split())


def test_branch_570_is_too_old_for_cuda_13(tmp_path: Path) -> None:
    proc = run(tmp_path, fake_host(tmp_path, 1, 0, "570.172.08", "12.8"))
    assert proc.returncode != 0
    assert "driver branch 570 below 580 (CUDA 13)" in proc.stdout


def test_hgx_without_a_running_fabric_manager_fails(tmp_path: Path) -> None:
    proc = run(tmp_path, fake_host(tmp_path, 8, 4, "580.95.05", "13.0"))
    assert proc.returncode != 0
    out = " ".join(proc.stdout.split())
    assert "NVSwitches: 4 (4 NVSwitch(es) on the PCI bus (10de class 0680))" in out
    assert "NVSwitches found but nvidia-fabricmanager is" in out
