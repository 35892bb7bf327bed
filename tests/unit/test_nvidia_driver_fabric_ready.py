"""nvidia-fabric-ready (roles/nvidia_driver/files), the oneshot the vllm units require on
NVSwitch hosts, run against a FAKE nvidia-smi (a shell script printing `nvidia-smi -q`'s
Fabric section; no GPU exists here): fabric In Progress then Completed, stuck In Progress
(bounded, failing with the state), and a failed fabric. Also the unit the role installs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import REPO

ROLE = REPO / "roles" / "nvidia_driver"
SCRIPT = ROLE / "files" / "nvidia-fabric-ready"

# `nvidia-smi -q` layout around the Fabric section (fabric manager user guide; public outputs).
GPU = """GPU 00000000:{bus}:00.0
    Product Name                          : NVIDIA H100 80GB HBM3
    Fabric
        State                             : {state}
        Status                            : {status}
        CliqueId                          : 32766
        ClusterUUID                       : 00000000-0000-0000-0000-000000000000
    Persistence Mode                      : Enabled
"""


def smi_q(states: list[tuple[str, str]]) -> str:
    head = "==============NVSMI LOG==============\n\nDriver Version : 580.95.05\n\n"
    return head + "".join(
        GPU.format(bus=f"{0x18 + i:02X}", state=s, status=t) for i, (s, t) in enumerate(states)
    )


def fake_smi(tmp: Path, outputs: list[str]) -> Path:
    """A FAKE nvidia-smi printing outputs[n] on its n-th call (the last one from then on)."""
    for i, text in enumerate(outputs):
        (tmp / f"out{i}").write_text(text)
    smi = tmp / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n# FAKE nvidia-smi (no GPU here)\n"
        f'n=$(cat {tmp}/calls 2>/dev/null || echo 0); echo $((n + 1)) > {tmp}/calls\n'
        f'[ -f {tmp}/out$n ] || n={len(outputs) - 1}\n'
        f'cat {tmp}/out$n\n'
    )  # fmt: skip
    smi.chmod(0o755)
    return smi


def run(tmp: Path, smi: Path, timeout_s: int = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), str(timeout_s), "0.1"],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "NVIDIA_SMI": str(smi), "STATUS_FILE": str(tmp / "status")},
    )  # fmt: skip


def test_fake_smi_in_progress_then_completed_is_ready(tmp_path: Path) -> None:
    waiting = smi_q([("Completed", "Success")] + [("In Progress", "N/A")] * 7)
    done = smi_q([("Completed", "Success")] * 8)
    smi = fake_smi(tmp_path, [waiting, waiting, done])
    proc = run(tmp_path, smi)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fabric state Completed on every GPU (8 GPU(s))" in proc.stdout
    assert (tmp_path / "calls").read_text().strip() == "3"  # polled until Completed
    assert "Completed on every GPU" in (tmp_path / "status").read_text()


def test_fake_smi_stuck_in_progress_fails_when_the_bound_is_reached(tmp_path: Path) -> None:
    smi = fake_smi(tmp_path, [smi_q([("Completed", "Success"), ("In Progress", "N/A")])])
    proc = run(tmp_path, smi, timeout_s=1)
    assert proc.returncode == 1
    out = proc.stdout.strip()
    assert out.startswith("nvidia-fabric-ready on ")
    assert "the NVLink fabric is not ready after 1s: GPU 00000000:19:00.0 state In Progress" in out
    assert "00000000:18:00.0" not in out  # the ready GPU is not blamed
    assert (tmp_path / "status").read_text().strip() == out


def test_fake_smi_fabric_failure_fails_at_once_naming_gpu_and_status(tmp_path: Path) -> None:
    smi = fake_smi(tmp_path, [smi_q([("Completed", "Success"), ("Completed", "Unknown Error")])])
    proc = run(tmp_path, smi)
    assert proc.returncode == 1
    failed = "the NVLink fabric FAILED: GPU 00000000:19:00.0 state Completed status Unknown Error"
    assert failed in proc.stdout
    assert (tmp_path / "calls").read_text().strip() == "1"  # no waiting on a failure


def test_fake_smi_failing_is_waited_for_and_reported(tmp_path: Path) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n# FAKE nvidia-smi\n"
        'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."\n'
        "exit 9\n"
    )
    smi.chmod(0o755)
    proc = run(tmp_path, smi, timeout_s=1)
    assert proc.returncode == 1
    assert "nvidia-smi -q failed or timed out: NVIDIA-SMI has failed" in proc.stdout


def test_driver_without_fabric_state_is_not_waited_for(tmp_path: Path) -> None:
    """A100 generation: nvidia-smi lists the GPUs but reports no fabric state (N/A)."""
    smi = fake_smi(tmp_path, [smi_q([("N/A", "N/A")] * 8)])
    proc = run(tmp_path, smi)
    assert proc.returncode == 0
    assert "reports no fabric state for any GPU" in proc.stdout
    assert "not waited for" in proc.stdout


def test_unit_and_vllm_ordering() -> None:
    unit = (ROLE / "templates" / "nvidia-fabric-ready.service.j2").read_text()
    for line in ["Type=oneshot", "RemainAfterExit=yes", "Requires=nvidia-fabricmanager.service",
                 "WantedBy=multi-user.target"]:  # fmt: skip
        assert line in unit.splitlines()
    vllm = (REPO / "roles" / "vllm" / "templates" / "vllm.service.j2").read_text()
    hunk = vllm[vllm.index("{%   if nvidia_driver_fabricmanager_enabled") :]
    hunk = hunk[: hunk.index("{%   endif %}")]
    assert "Requires=nvidia-fabric-ready.service" in hunk.splitlines()
    assert "After=nvidia-fabric-ready.service" in hunk.splitlines()
