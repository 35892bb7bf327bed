"""`make gpu-smoke` (lab/gpu_smoke.py): its steps' logic, and its real run on this machine.

This machine has no NVIDIA GPU: the real run must skip every step saying so and exit 0. The
GPU machines are a FAKE host (no GPU, no systemd-run of a CUDA unit, no package index here):
it answers each command the steps run with what a real machine would print (the CUDA probe's
and the Triton probe's JSON lines, ansible-playbook's report, systemctl, journalctl, the
vLLM server's completion), so that each decision (run, skip and why, fail and why, clean up)
is checked. The unit's hardening is read from the real template.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import REPO


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_smoke", REPO / "lab" / "gpu_smoke.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_smoke"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


SMOKE = load()
CUDA_OK = '{"ok": true, "library": "libcuda.so.1", "cuInit": 0, "error": "", "driver_cuda": "13.0", "devices": 1}'  # noqa: E501
TRITON_OK = ('TRITON_PROBE {"python": "/usr/bin/python3", "version": "3.12.3", "python_h":'
             ' "/usr/include/python3.12/Python.h", "cc": "/usr/bin/gcc", "torch": "2.11.0+cu130",'
             ' "torch_cuda": "13.0", "triton": "3.6.0", "device": "NVIDIA H100 80GB HBM3",'
             ' "ok": true, "error": ""}')  # fmt: skip
TRITON_NO_HEADERS = ('TRITON_PROBE {"python": "/usr/bin/python3", "python_h": "", "cc":'
                     ' "/usr/bin/gcc", "torch": "2.11.0+cu130", "torch_cuda": "13.0", "triton":'
                     ' "3.6.0", "device": "NVIDIA H100 80GB HBM3", "ok": false, "error":'
                     ' "/tmp/tmpa1/cuda_utils.c:6:10: fatal error: Python.h: No such file or'
                     ' directory"}')  # fmt: skip


class FakeHost:
    """FAKE machine (see the module docstring). Every command costs 1 s of fake time."""

    def __init__(self, tmp: Path, **kw: Any) -> None:
        self.tmp = tmp
        self.gpus: int = kw.get("gpus", 1)
        self.files: set[str] = set(kw.get("files", {"/usr/bin/python3"}))
        self.tools: dict[str, str] = kw.get("tools", {"python3": "/usr/bin/python3"})
        self.root: bool = kw.get("root", True)
        self.systemd: bool = kw.get("systemd", True)
        self.index: str = kw.get("index", "[Errno -3] Temporary failure in name resolution")
        self.answers: dict[str, tuple[int, str]] = {
            # The probe's code also imports torch and triton: it is looked for first.
            "TRITON_PROBE": (0, TRITON_OK), "cuda_init_probe.py": (0, CUDA_OK),
            "import torch, triton": (0, ""), "sys.version_info[:2]": (0, "3.12\n"),
            "systemctl is-active": (0, "activating\n"), "journalctl": (0, "engine died\n"),
            **kw.get("answers", {})}  # fmt: skip
        self.completion: list[tuple[int, str]] = kw.get("completion", [
            (0, "Connection refused"), (200, '{"choices": [{"text": " abc"}]}')])
        self.runs: list[list[str]] = []
        self.removed: list[str] = []
        self.made: list[str] = []
        self.clock = 0.0
        self.playbook: Callable[[list[str]], tuple[int, str]] | None = kw.get("playbook")

    def run(self, argv: list[str], timeout: float, env: dict[str, str] | None = None,
            ) -> tuple[int, str]:  # fmt: skip
        self.runs.append(argv)
        self.clock += 1
        joined = " ".join(argv)
        if argv[0].endswith("ansible-playbook") and self.playbook:
            return self.playbook(argv)
        for needle, answer in sorted(self.answers.items(), key=lambda kv: kv[0] != "TRITON_PROBE"):
            if needle in joined:
                return answer
        return 0, ""

    def which(self, name: str) -> str | None:
        return self.tools.get(name)

    def nvidia_gpus(self) -> int:
        return self.gpus

    def is_root(self) -> bool:
        return self.root

    def has_systemd(self) -> bool:
        return self.systemd

    def exists(self, path: str) -> bool:
        # The repository's own files are real (the lock); the machine's are the fake's.
        return path in self.files or (path.startswith(str(REPO / "roles")) and Path(path).exists())

    def reachable(self, url: str) -> str:
        return self.index

    def http(self, url: str, body: dict[str, Any] | None, timeout: float) -> tuple[int, str]:
        self.clock += 1
        return self.completion.pop(0) if len(self.completion) > 1 else self.completion[0]

    def free_port(self) -> int:
        return 18123

    def mkdtemp(self) -> str:
        path = self.tmp / f"tmp{len(self.made)}"
        path.mkdir()
        self.made.append(str(path))
        return str(path)

    def remove(self, path: str) -> None:
        self.removed.append(path)

    def sleep(self, seconds: float) -> None:
        self.clock += seconds

    def now(self) -> float:
        return self.clock


def run(host: FakeHost, *args: str) -> tuple[int, dict[str, Any]]:
    out = host.tmp / "smoke.json"
    code = SMOKE.main(["--json", str(out), *args], host=host)
    return code, json.loads(out.read_text())


def steps(report: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {s["name"]: (s["status"], s["detail"]) for s in report["steps"]}


def networked(tmp: Path, **kw: Any) -> FakeHost:
    """A FAKE real server: a package index answers, root, systemd, uv in .venv."""
    return FakeHost(tmp, index="", files={"/usr/bin/python3", str(REPO / ".venv/bin/uv")}, **kw)


# --- the real run here --------------------------------------------------------------------------


def test_on_this_machine_every_step_is_skipped_and_the_exit_is_0(tmp_path: Path) -> None:
    nvidia = [p for p in Path("/sys/bus/pci/devices").glob("*/vendor")
              if p.read_text().strip() == "0x10de"]  # fmt: skip
    assert not nvidia, "this test needs a machine without an NVIDIA PCI device"
    # Plain python3 (no venv), as on the lent GPU machines.
    proc = subprocess.run(["/usr/bin/python3", "lab/gpu_smoke.py", "--json",
                           str(tmp_path / "s.json")], cwd=REPO, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["exit"] == 0
    assert [s["name"] for s in report["steps"]] == ["record", "gpu-verify", "cuda-init", "triton",
                                                   "install", "tiny-model", "serve"]  # fmt: skip
    for s in report["steps"]:
        assert (s["status"], s["detail"]) == ("skipped", "no NVIDIA GPU on this machine (PCI scan)")
    assert re.search(r"^serve\s+skipped\s+0\.0s\s+no NVIDIA GPU", proc.stdout, re.M)
    make = subprocess.run(["make", "-s", "gpu-smoke", f"GPU_SMOKE_ARGS=--json {tmp_path}/m.json"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert make.returncode == 0, make.stdout + make.stderr
    assert json.loads((tmp_path / "m.json").read_text())["exit"] == 0


def test_the_script_imports_nothing_outside_the_standard_library() -> None:
    text = (REPO / "lab" / "gpu_smoke.py").read_text()
    imported = set(re.findall(r"^(?:import|from) (\w+)", text, re.M))
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


# --- a lent GPU machine: no network, no Ansible, python3 with torch and Triton -----------------


def test_lent_gpu_machine_runs_the_probes_and_says_why_it_skips_the_rest(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    code, report = run(host)
    s = steps(report)
    assert code == 0 and report["exit"] == 0
    assert s["record"] == ("skipped", "no --record DIR")
    assert s["gpu-verify"][0] == "skipped" and "Ansible is not installed here" in s["gpu-verify"][1]
    assert s["cuda-init"] == ("passed", "cuInit 0, 1 device(s), driver CUDA 13.0")
    assert s["triton"][0] == "passed"
    assert ("/usr/bin/python3 (no vLLM venv; a python3 that has torch and triton); torch"
            " 2.11.0+cu130 CUDA 13.0, triton 3.6.0 on NVIDIA H100 80GB HBM3; Python.h"
            " /usr/include/python3.12/Python.h; cc /usr/bin/gcc") in s["triton"][1]
    assert s["install"] == ("skipped", "no package index answers (https://pypi.org/simple/:"
                                       " [Errno -3] Temporary failure in name resolution)")
    assert s["tiny-model"] == ("skipped", "needs the install step")
    assert s["serve"] == ("skipped", "needs the tiny-model step")
    # The Triton probe ran with a fresh cache, then that folder was removed.
    assert host.removed == host.made and host.made


def test_missing_python_h_fails_the_triton_step(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, answers={"TRITON_PROBE": (1, TRITON_NO_HEADERS)})
    code, report = run(host)
    status, detail = steps(report)["triton"]
    assert code == 1 and status == "failed"
    assert detail.startswith("/tmp/tmpa1/cuda_utils.c:6:10: fatal error: Python.h: No such file")
    assert "Python.h MISSING" in detail


def test_no_interpreter_with_torch_skips_triton(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, answers={"import torch, triton": (1, "ModuleNotFoundError")})
    _, report = run(host)
    status, detail = steps(report)["triton"]
    assert status == "skipped" and detail.startswith("no vLLM venv (/opt/vllm/venvs/vllm-0.32.0")


def test_the_vllm_venv_is_preferred_for_triton(tmp_path: Path) -> None:
    venv = "/opt/vllm/venvs/vllm-0.32.0/bin/python"
    host = FakeHost(tmp_path, files={venv})
    run(host)
    probe = next(r for r in host.runs if "TRITON_PROBE" in " ".join(r))
    assert probe[0] == venv


def test_cuinit_failing_fails_the_run_with_its_hint(tmp_path: Path) -> None:
    failing = ('{"ok": false, "cuInit": 802, "error": "CUDA_ERROR_SYSTEM_NOT_READY", "hint":'
               ' "system not yet initialized"}')  # fmt: skip
    host = FakeHost(tmp_path, answers={"cuda_init_probe.py": (1, failing)})
    code, report = run(host)
    assert code == 1
    assert steps(report)["cuda-init"] == (
        "failed", "rc 1: CUDA_ERROR_SYSTEM_NOT_READY: system not yet initialized")


def test_gpu_verify_runs_where_ansible_is_and_reports_the_failed_checks(tmp_path: Path) -> None:
    def playbook(argv: list[str]) -> tuple[int, str]:
        report = argv[argv.index("-e") + 1].split("=", 1)[1]
        Path(report).write_text(json.dumps({"gpu": True, "ok": False, "checks": [
            {"name": "fabric", "ok": False, "detail": "fabric state In Progress", "fix": "x"},
            {"name": "CUDA init", "ok": True, "detail": "cuInit 0", "fix": ""}]}))
        return 2, "fatal: [localhost]: FAILED!"

    host = FakeHost(tmp_path, tools={"ansible-playbook": "/usr/bin/ansible-playbook"},
                    playbook=playbook)  # fmt: skip
    code, report = run(host)
    assert code == 1
    assert steps(report)["gpu-verify"] == ("failed", "fabric: fabric state In Progress")
    assert report["gpu_verify"]["checks"][0]["name"] == "fabric"
    call = next(r for r in host.runs if r[0].endswith("ansible-playbook"))
    assert call[1] == str(REPO / "playbooks" / "gpu_verify.yml")


def test_record_saves_raw_outputs_with_timeouts(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, answers={"nvidia-smi -q": (0, "GPU 00000000:18:00.0\n")})
    _, report = run(host, "--record", str(tmp_path / "rec"))
    assert steps(report)["record"] == ("passed", f"8 files in {tmp_path / 'rec'}")
    assert "GPU 00000000:18:00.0" in (tmp_path / "rec" / "nvidia-smi-q.txt").read_text()
    smi = [r for r in host.runs if "nvidia-smi" in r]
    assert smi and all(r[:4] == ["timeout", "-k", "5", "20"] for r in smi)


# --- a real server (FAKE): index, root, systemd ---------------------------------------------------


def test_server_installs_the_lock_serves_the_tiny_model_and_cleans_up(tmp_path: Path) -> None:
    host = networked(tmp_path)
    code, report = run(host)
    s = steps(report)
    assert code == 0, s
    assert s["install"][0] == "passed" and "uv pip sync --require-hashes" in s["install"][1]
    sync = next(r for r in host.runs if r[1:3] == ["pip", "sync"])
    assert sync[-1] == str(REPO / "roles/vllm/files/locks/vllm-0.32.0.txt")
    assert "--require-hashes" in sync
    assert s["tiny-model"][0] == "passed"
    assert s["serve"][0] == "passed" and "one completion on port 18123" in s["serve"][1]
    unit = next(r for r in host.runs if r[0] == "systemd-run")
    props = [unit[i + 1] for i, a in enumerate(unit) if a == "-p"]
    for prop in ("DynamicUser=yes", "NoNewPrivileges=yes", "SystemCallFilter=~@privileged",
                 "DevicePolicy=closed", "DeviceAllow=char-nvidia-uvm rw", "LimitMEMLOCK=infinity",
                 "ProtectSystem=strict", "PrivateTmp=yes"):  # fmt: skip
        assert prop in props, prop
    assert not [p for p in props if p.startswith(("Restart", "PrivateDevices", "NoExecPaths"))]
    assert "--setenv=CUDA_VISIBLE_DEVICES=0" in unit
    # Left as found: the unit stopped, every temporary folder removed.
    name = next(a for a in unit if a.startswith("--unit=")).split("=", 1)[1]
    assert ["systemctl", "stop", name] in host.runs
    assert sorted(host.removed) == sorted(host.made)


def test_server_whose_unit_dies_fails_with_its_journal_and_still_cleans_up(tmp_path: Path) -> None:
    died = "RuntimeError: Failed to find C compiler"
    host = networked(tmp_path, answers={"systemctl is-active": (3, "failed\n"),
                                        "journalctl": (0, died)},
                     completion=[(0, "Connection refused")])  # fmt: skip
    code, report = run(host)
    status, detail = steps(report)["serve"]
    assert code == 1 and status == "failed"
    assert "failed: RuntimeError: Failed to find C compiler" in detail
    assert any(r[:2] == ["systemctl", "stop"] for r in host.runs)
    assert sorted(host.removed) == sorted(host.made)


def test_not_root_skips_serving(tmp_path: Path) -> None:
    _, report = run(networked(tmp_path, root=False))
    assert steps(report)["serve"] == ("skipped", "needs root (a system unit through systemd-run)")


def test_a_short_budget_skips_the_install_saying_so(tmp_path: Path) -> None:
    _, report = run(networked(tmp_path), "--budget", "120")
    status, detail = steps(report)["install"]
    assert status == "skipped" and re.fullmatch(r"time budget: \d+ s left, the step needs 240 s",
                                                detail)  # fmt: skip


# --- the unit's hardening comes from the template ----------------------------------------------


def test_every_literal_service_directive_of_the_gpu_unit_is_carried() -> None:
    template = (REPO / "roles/vllm/templates/vllm.service.j2").read_text()
    props = SMOKE.unit_properties(template)
    service = template.split("[Service]", 1)[1].split("[Install]", 1)[0]
    gpu = re.sub(r"\{% if __vllm_device == 'cpu' %\}.*?\{% else %\}", "", service, flags=re.S)
    gpu = re.sub(r"\{% if args\['enforce-eager'\].*?\{% endif %\}", "", gpu, flags=re.S)
    literal = [line for line in gpu.splitlines()
               if re.match(r"^[A-Z][A-Za-z]+=", line) and "{{" not in line]  # fmt: skip
    assert sorted(props) == sorted(p for p in literal if not p.startswith(("Restart=",
                                                                           "RestartSec=")))
    assert "PrivateDevices=yes" not in props and len(props) > 30


def test_an_unknown_condition_in_the_template_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"unknown condition in vllm\.service\.j2: 'foo'"):
        SMOKE.unit_properties("[Service]\n{% if foo %}\nA=b\n{% endif %}\n[Install]\n")
