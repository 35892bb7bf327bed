#!/usr/bin/env python3
"""`make gpu-smoke`: vLLM's first real start on this machine, as far as the machine allows.

Steps, in order, each timed, each passed / failed / skipped with the reason:
  record      (--record DIR) raw outputs of nvidia-smi, /proc and mokutil, to become fixtures
  gpu-verify  `make gpu-verify` (playbooks/gpu_verify.yml) on the real hardware, if Ansible is here
  cuda-init   cuInit through libcuda with ctypes (roles/vllm/files/cuda_init_probe.py)
  triton      torch + Triton: one small Triton kernel compiled (fresh cache) and run with the
              interpreter vLLM would use: the role's venv, else a python3 that has torch and
              triton (a missing Python.h or C compiler shows here)
  install     the project's CUDA lock (roles/vllm/files/locks/vllm-<version>.txt) into a venv
              as the role does (uv pip sync --require-hashes; pip without uv), where a package
              index answers
  tiny-model  the lab's generated model (lab/make_tiny_model.py) with that venv's Python
  serve       the tiny model on GPU 0 by a transient unit (systemd-run) with the vLLM unit's
              hardening, read from roles/vllm/templates/vllm.service.j2, answering one completion

Standard library only (torch and triton are imported in the probe's subprocess only): runs
with plain python3, with or without the project's .venv. Leaves the machine as it found it
(temporary folders removed, the transient unit stopped). Exit 0 when every step that ran
passed, 1 when one failed. --json FILE writes the steps as JSON. On a machine without an
NVIDIA GPU every step is skipped, saying so, and the exit is 0.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "roles" / "vllm" / "templates" / "vllm.service.j2"
PROBE = REPO / "roles" / "vllm" / "files" / "cuda_init_probe.py"
DEFAULT_BUDGET = 540.0  # 9 minutes, the whole run
SMI_TIMEOUT = 20.0
VENV_HINT = "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt"

# One small Triton kernel, compiled into a fresh cache (TRITON_CACHE_DIR), run and checked:
# what vLLM's first start does, where a missing Python.h or C compiler shows.
TRITON_PROBE = r'''
import json, os, shutil, sys, sysconfig, traceback
out = {"python": sys.executable, "version": sys.version.split()[0]}
inc = sysconfig.get_paths()["include"]
header = os.path.join(inc, "Python.h")
out["python_h"] = header if os.path.isfile(header) else ""
out["cc"] = os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang") or ""
try:
    import torch, triton, triton.language as tl
    out.update(torch=torch.__version__, torch_cuda=torch.version.cuda, triton=triton.__version__)
    out["device"] = torch.cuda.get_device_name(0)

    @triton.jit
    def add(x_ptr, y_ptr, o_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask)
        tl.store(o_ptr + offs, x + tl.load(y_ptr + offs, mask=mask), mask=mask)

    x = torch.arange(4096, device="cuda", dtype=torch.float32)
    y = torch.ones_like(x)
    o = torch.empty_like(x)
    add[(triton.cdiv(4096, 1024),)](x, y, o, 4096, BLOCK=1024)
    torch.cuda.synchronize()
    out["ok"] = bool(torch.equal(o, x + 1))
    out["error"] = "" if out["ok"] else "wrong result"
except Exception as exc:
    out["ok"] = False
    lines = traceback.format_exc().strip().splitlines()
    hints = [l.strip() for l in lines
             if "Python.h" in l or "compiler" in l.lower() or "error:" in l]
    out["error"] = (hints[-1] if hints else lines[-1])[:400]
print("TRITON_PROBE " + json.dumps(out))
'''


# --------------------------------------------------------------------------- the machine
class Host(Protocol):
    """What the steps ask of the machine (tests pass a FAKE one)."""

    def run(self, argv: list[str], timeout: float, env: dict[str, str] | None = None,
            ) -> tuple[int, str]: ...  # fmt: skip
    def which(self, name: str) -> str | None: ...
    def nvidia_gpus(self) -> int: ...
    def is_root(self) -> bool: ...
    def has_systemd(self) -> bool: ...
    def exists(self, path: str) -> bool: ...
    def reachable(self, url: str) -> str: ...
    def http(self, url: str, body: dict[str, Any] | None, timeout: float) -> tuple[int, str]: ...
    def free_port(self) -> int: ...
    def mkdtemp(self) -> str: ...
    def remove(self, path: str) -> None: ...
    def sleep(self, seconds: float) -> None: ...
    def now(self) -> float: ...


class RealHost:
    def run(self, argv: list[str], timeout: float, env: dict[str, str] | None = None,
            ) -> tuple[int, str]:  # fmt: skip
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=max(timeout, 1),
                                  env={**os.environ, **(env or {})}, cwd=REPO)  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            partial = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
            return 124, partial + f"\n(timed out after {timeout:.0f} s)"
        except OSError as exc:
            return 127, str(exc)
        return proc.returncode, proc.stdout + proc.stderr

    def which(self, name: str) -> str | None:
        return shutil.which(name)

    def nvidia_gpus(self) -> int:
        count = 0
        for dev in Path("/sys/bus/pci/devices").glob("*"):
            try:
                vendor = (dev / "vendor").read_text().strip()
                cls = (dev / "class").read_text().strip()
            except OSError:
                continue
            count += vendor == "0x10de" and cls.startswith("0x03")
        return count

    def is_root(self) -> bool:
        return os.geteuid() == 0

    def has_systemd(self) -> bool:
        return Path("/run/systemd/system").is_dir() and shutil.which("systemd-run") is not None

    def exists(self, path: str) -> bool:
        return Path(path).exists()

    def reachable(self, url: str) -> str:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5):
                return ""
        except urllib.error.HTTPError:
            return ""  # it answered
        except (OSError, ValueError) as exc:
            return str(getattr(exc, "reason", exc))

    def http(self, url: str, body: dict[str, Any] | None, timeout: float) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except OSError as exc:
            return 0, str(exc)

    def free_port(self) -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def mkdtemp(self) -> str:
        # A venv is gigabytes (not /tmp, often a small tmpfs), and the transient unit must see
        # it: its PrivateTmp hides /tmp and /var/tmp, ProtectHome hides /root and /home.
        base = "/var/lib" if os.geteuid() == 0 else "/var/tmp"
        path = tempfile.mkdtemp(prefix="gpu-smoke-", dir=base if Path(base).is_dir() else None)
        os.chmod(path, 0o755)  # the transient unit's dynamic user reads the venv and model
        return path

    def remove(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def now(self) -> float:
        return time.monotonic()


# --------------------------------------------------------------------------- steps
@dataclass
class Step:
    name: str
    status: str = "skipped"  # passed, failed, skipped
    seconds: float = 0.0
    detail: str = ""


@dataclass
class Smoke:
    host: Host
    budget: float = DEFAULT_BUDGET
    record_dir: str = ""
    vllm_version: str = ""
    steps: list[Step] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    started: float = 0.0

    def left(self) -> float:
        return self.budget - (self.host.now() - self.started)

    def step(self, name: str, fn: Callable[[], tuple[str, str]], needs: float) -> Step:
        """Run fn unless the budget is short; fn returns (status, detail)."""
        s = Step(name)
        begin = self.host.now()
        if self.left() < needs:
            s.detail = (f"time budget: {max(self.left(), 0):.0f} s left, the step needs"
                        f" {needs:.0f} s")
        else:
            try:
                s.status, s.detail = fn()
            except Exception as exc:  # a step's own bug must not skip the clean-up
                s.status, s.detail = "failed", f"{type(exc).__name__}: {exc}"
        s.seconds = round(self.host.now() - begin, 1)
        self.steps.append(s)
        print(f"gpu-smoke: {s.name}: {s.status} ({s.seconds:.1f} s) {s.detail}", file=sys.stderr)
        return s

    def passed(self, name: str) -> bool:
        return any(s.name == name and s.status == "passed" for s in self.steps)


def vllm_release(version: str) -> dict[str, str]:
    """The row of roles/vllm/vars/main.yml's __vllm_releases for this version (no YAML lib)."""
    text = (REPO / "roles" / "vllm" / "vars" / "main.yml").read_text()
    m = re.search(r'^\s+"' + re.escape(version) + r'":\s*\{([^}]*)\}', text, re.M)
    if not m:
        return {}
    return {k.strip(): v.strip().strip('"') for k, v in
            (part.split(":", 1) for part in m[1].split(",") if ":" in part)}  # fmt: skip


def pinned_version() -> str:
    text = (REPO / "roles" / "vllm" / "defaults" / "main.yml").read_text()
    m = re.search(r'^vllm_version:\s*"([^"]+)"', text, re.M)
    return m[1] if m else ""


def last_json(text: str, prefix: str = "") -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if prefix and line.startswith(prefix):
            line = line[len(prefix):].strip()
        elif prefix:
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def do_record(smoke: Smoke) -> tuple[str, str]:
    h, out = smoke.host, Path(smoke.record_dir)
    out.mkdir(parents=True, exist_ok=True)
    commands = {
        "nvidia-smi.txt": ["nvidia-smi"],
        "nvidia-smi-q.txt": ["nvidia-smi", "-q"],
        "nvidia-smi-query.csv": ["nvidia-smi", "--query-gpu=index,name,driver_version,"
                                 "persistence_mode,memory.total", "--format=csv,noheader"],
        "proc-driver-nvidia-version.txt": ["cat", "/proc/driver/nvidia/version"],
        "lspci-nn.txt": ["lspci", "-Dnn"],
        "mokutil-sb-state.txt": ["mokutil", "--sb-state"],
        "dev-nvidia.txt": ["sh", "-c", "ls -l /dev/nvidia* /dev/nvidia-caps 2>&1"],
        "os-release.txt": ["cat", "/etc/os-release"],
    }  # fmt: skip
    written = []
    for name, argv in commands.items():
        timeout = SMI_TIMEOUT if argv[0] == "nvidia-smi" else 10
        rc, text = h.run(["timeout", "-k", "5", str(int(timeout)), *argv], timeout + 10)
        (out / name).write_text(f"# {' '.join(argv)} (rc {rc})\n{text}")
        written.append(name)
    return "passed", f"{len(written)} files in {out}"


def ansible_playbook(h: Host) -> str | None:
    local = REPO / ".venv" / "bin" / "ansible-playbook"
    return str(local) if h.exists(str(local)) else h.which("ansible-playbook")


def do_gpu_verify(smoke: Smoke) -> tuple[str, str]:
    h = smoke.host
    playbook = ansible_playbook(h)
    if not playbook:
        return "skipped", ("Ansible is not installed here (no .venv, no ansible-playbook):"
                           f" {VENV_HINT}")
    tmp = h.mkdtemp()
    smoke.cleanups.append(lambda: h.remove(tmp))
    report = f"{tmp}/gpu-verify.json"
    rc, text = h.run([playbook, str(REPO / "playbooks" / "gpu_verify.yml"), "-e",
                      f"gpu_verify_report={report}"], min(240, smoke.left()),
                     env={"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
                          "ANSIBLE_LOCALHOST_WARNING": "0",
                          "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0"})  # fmt: skip
    try:
        data = json.loads(Path(report).read_text())
    except (OSError, ValueError):
        data = {}
    smoke.state["gpu_verify"] = data
    bad = [c for c in data.get("checks", []) if not c.get("ok")]
    if rc == 0:
        return "passed", f"{len(data.get('checks', []))} checks passed"
    if bad:
        return "failed", "; ".join(f"{c['name']}: {c['detail']}" for c in bad)[:600]
    return "failed", f"rc {rc}: " + " ".join(text.split())[-400:]


def do_cuda_init(smoke: Smoke) -> tuple[str, str]:
    rc, text = smoke.host.run([sys.executable, str(PROBE)], 90)
    result = last_json(text)
    smoke.state["cuda_init"] = result
    if rc == 0 and result.get("ok"):
        return "passed", (f"cuInit 0, {result.get('devices')} device(s), driver CUDA"
                          f" {result.get('driver_cuda')}")  # fmt: skip
    hint = f": {result['hint']}" if result.get("hint") else ""
    return "failed", f"rc {rc}: {result.get('error') or text.strip()[-300:]}{hint}"


def torch_python(smoke: Smoke) -> tuple[str, str]:
    """vLLM's venv if the role made one, else a python3 with torch and triton; and why."""
    h = smoke.host
    venv = f"/opt/vllm/venvs/vllm-{smoke.vllm_version}/bin/python"
    if h.exists(venv):
        return venv, "the vllm role's venv"
    seen = []
    for cand in ["/usr/bin/python3", h.which("python3") or "", sys.executable]:
        if not cand or cand in seen:
            continue
        seen.append(cand)
        rc, _ = h.run([cand, "-c", "import torch, triton"], 180)
        if rc == 0:
            return cand, "no vLLM venv; a python3 that has torch and triton"
    return "", f"no vLLM venv ({venv}) and no python3 with torch and triton ({', '.join(seen)})"


def do_triton(smoke: Smoke) -> tuple[str, str]:
    h = smoke.host
    python, why = torch_python(smoke)
    if not python:
        return "skipped", why
    tmp = h.mkdtemp()
    smoke.cleanups.append(lambda: h.remove(tmp))
    rc, text = h.run([python, "-c", TRITON_PROBE], min(300, smoke.left()),
                     env={"TRITON_CACHE_DIR": f"{tmp}/triton-cache", "PYTHONSAFEPATH": "1"})
    result = last_json(text, "TRITON_PROBE ")
    smoke.state["triton"] = result
    where = (f"{python} ({why}); torch {result.get('torch', '?')} CUDA"
             f" {result.get('torch_cuda', '?')}, triton {result.get('triton', '?')} on"
             f" {result.get('device', '?')}; Python.h {result.get('python_h') or 'MISSING'};"
             f" cc {result.get('cc') or 'MISSING'}")  # fmt: skip
    if rc == 0 and result.get("ok"):
        return "passed", "kernel compiled and correct: " + where
    return "failed", f"{result.get('error') or ' '.join(text.split())[-300:]} | {where}"


def index_url() -> str:
    return (os.environ.get("UV_INDEX_URL") or os.environ.get("PIP_INDEX_URL")
            or "https://pypi.org/simple/")  # fmt: skip


def venv_python(smoke: Smoke) -> str:
    """An interpreter in the release's range, as the role's vllm_python: auto picks one."""
    row = vllm_release(smoke.vllm_version)
    low = tuple(int(x) for x in row.get("python_min", "3.11").split("."))
    below = tuple(int(x) for x in row.get("python_below", "3.15").split("."))
    for cand in ["/usr/bin/python3", "/usr/bin/python3.11", "/usr/bin/python3.12"]:
        if not smoke.host.exists(cand):
            continue
        code = "import sys; print('%d.%d' % sys.version_info[:2])"
        rc, out = smoke.host.run([cand, "-c", code], 30)
        parts = out.strip().split(".")
        if rc == 0 and len(parts) == 2 and low <= (int(parts[0]), int(parts[1])) < below:
            return cand
    return ""


def do_install(smoke: Smoke) -> tuple[str, str]:
    h = smoke.host
    lock = REPO / "roles" / "vllm" / "files" / "locks" / f"vllm-{smoke.vllm_version}.txt"
    if not h.exists(str(lock)):
        return "skipped", f"no CUDA lock {lock.relative_to(REPO)} (make vllm-lock PACKAGE=vllm)"
    url = index_url()
    unreachable = h.reachable(url)
    if unreachable:
        return "skipped", f"no package index answers ({url}: {unreachable})"
    python = venv_python(smoke)
    if not python:
        return "skipped", f"no interpreter in vLLM {smoke.vllm_version}'s Python range"
    tmp = h.mkdtemp()
    smoke.cleanups.append(lambda: h.remove(tmp))
    venv = f"{tmp}/venv"
    local_uv = str(REPO / ".venv" / "bin" / "uv")
    uv = local_uv if h.exists(local_uv) else h.which("uv")
    timeout = min(360, smoke.left() - 150)
    begin = h.now()
    if uv:
        env = {"UV_CACHE_DIR": f"{tmp}/uv-cache", "UV_NO_CONFIG": "1",
               "UV_PYTHON_DOWNLOADS": "never"}
        rc, text = h.run([uv, "venv", "--quiet", "--python", python, venv], 60, env=env)
        if rc == 0:
            rc, text = h.run([uv, "pip", "sync", "--quiet", "--python", f"{venv}/bin/python",
                              "--require-hashes", str(lock)], timeout, env=env)  # fmt: skip
        how = "uv pip sync --require-hashes"
    else:
        rc, text = h.run([python, "-m", "venv", venv], 120)
        if rc == 0:
            rc, text = h.run([f"{venv}/bin/pip", "install", "-q", "--no-cache-dir", "--no-deps",
                              "--require-hashes", "-r", str(lock)], timeout)  # fmt: skip
        how = "pip install --require-hashes --no-deps (no uv here)"
    if rc != 0:
        return "failed", f"{how}: rc {rc}: {' '.join(text.split())[-400:]}"
    smoke.state["venv"] = venv
    smoke.state["tmp"] = tmp
    return "passed", f"vllm=={smoke.vllm_version} into {venv} with {how} ({h.now() - begin:.0f} s)"


def do_tiny_model(smoke: Smoke) -> tuple[str, str]:
    if not smoke.passed("install"):
        return "skipped", "needs the install step"
    model = f"{smoke.state['tmp']}/tiny-llama"
    rc, text = smoke.host.run([f"{smoke.state['venv']}/bin/python",
                               str(REPO / "lab" / "make_tiny_model.py"), "--output", model], 180)
    if rc != 0:
        return "failed", f"rc {rc}: {' '.join(text.split())[-300:]}"
    smoke.state["model"] = model
    return "passed", text.strip().splitlines()[-1] if text.strip() else model


# --- the vLLM unit's hardening, read from its template -----------------------------------------
# The conditions the template's [Service] section branches on, as a GPU instance without
# --enforce-eager sees them. An unknown condition is an error: the template changed, and this
# table (and the unit test that renders it) must follow.
CONDITIONS = {
    "__vllm_device == 'cpu'": False,
    "__vllm_device == 'gpu'": True,
    "args['enforce-eager'] | default(false)": False,
}
# Not hardening: restarting is the role's business, not the smoke's (a failure must show).
NOT_HARDENING = {"Restart", "RestartSec"}


def unit_properties(template: str) -> list[str]:
    """Every literal Key=Value line of the template's [Service] section, GPU branch.

    Lines with {{ }} (user, paths, environment, ExecStart) are the instance's own: the smoke
    sets its own (DynamicUser, a RuntimeDirectory as the state folder, its own command).
    """
    lines = template.split("[Service]", 1)[1].split("[Install]", 1)[0].splitlines()
    props: list[str] = []
    active = [True]  # one entry per open {% if %}: is this branch taken (and its parents)?
    taken = [True]
    skip_for = 0
    continued = False
    for raw in lines:
        line = raw.strip()
        # "{% " tags structure the section; "{%- " ones build ExecStart's arguments (skipped).
        tag = re.fullmatch(r"\{%\s+(if|elif|else|endif|for|endfor)\b(.*?)%\}", line)
        if tag and skip_for and tag[1] not in ("for", "endfor"):
            continue
        if tag:
            kind, cond = tag[1], tag[2].strip()
            if kind == "for":
                skip_for += 1
            elif kind == "endfor":
                skip_for -= 1
            elif kind == "if":
                if cond not in CONDITIONS:
                    raise ValueError(f"unknown condition in {TEMPLATE.name}: {cond!r}")
                value = CONDITIONS[cond]
                active.append(active[-1] and value)
                taken.append(value)
            elif kind == "else":
                active[-1] = active[-2] and not taken[-1]
                taken[-1] = True
            elif kind == "endif":
                active.pop()
                taken.pop()
            else:
                raise ValueError(f"elif is not handled here: {line!r}")
            continue
        was_continued, continued = continued, line.endswith("\\")
        if (not line or line.startswith("#") or "{{" in line or "{%" in line or skip_for
                or was_continued or not active[-1] or "=" not in line):  # fmt: skip
            continue
        if line.split("=", 1)[0] not in NOT_HARDENING:
            props.append(line)
    return props


def do_serve(smoke: Smoke) -> tuple[str, str]:
    h = smoke.host
    if not smoke.passed("tiny-model"):
        return "skipped", "needs the tiny-model step"
    if not h.is_root():
        return "skipped", "needs root (a system unit through systemd-run)"
    if not h.has_systemd():
        return "skipped", "no systemd here (systemd-run)"
    props = unit_properties(TEMPLATE.read_text())
    name = f"gpu-smoke-{os.getpid()}"
    state = f"/run/{name}"
    port = h.free_port()
    env = {"HOME": state, "XDG_CACHE_HOME": f"{state}/cache", "XDG_CONFIG_HOME": f"{state}/config",
           "HF_HOME": f"{state}/cache/huggingface", "VLLM_CACHE_ROOT": f"{state}/cache/vllm",
           "VLLM_CONFIG_ROOT": f"{state}/config/vllm", "TRITON_CACHE_DIR": f"{state}/cache/triton",
           "TORCHINDUCTOR_CACHE_DIR": f"{state}/cache/torchinductor",
           "NUMBA_CACHE_DIR": f"{state}/cache/numba", "PYTHONSAFEPATH": "1",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
           "CUDA_VISIBLE_DEVICES": "0"}  # fmt: skip
    argv = ["systemd-run", f"--unit={name}", "--collect", "--quiet",
            "-p", "DynamicUser=yes", "-p", f"RuntimeDirectory={name}",
            "-p", f"WorkingDirectory={state}"]  # fmt: skip
    for prop in props:
        argv += ["-p", prop]
    for key, value in env.items():
        argv += [f"--setenv={key}={value}"]
    argv += ["--", f"{smoke.state['venv']}/bin/python", "-m", "vllm.entrypoints.openai.api_server",
             "--host", "127.0.0.1", "--port", str(port), "--model", smoke.state["model"],
             "--served-model-name", "tiny", "--max-model-len", "512", "--max-num-seqs", "8",
             "--gpu-memory-utilization", "0.3"]  # fmt: skip
    rc, text = h.run(argv, 60)
    if rc != 0:
        return "failed", f"systemd-run refused the unit: {' '.join(text.split())[-400:]}"
    smoke.cleanups.append(lambda: stop_unit(h, name))
    deadline = h.now() + min(360, smoke.left() - 20)
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 4, "temperature": 0}
    while h.now() < deadline:
        code, answer = h.http(f"http://127.0.0.1:{port}/v1/completions", body, 30)
        if code == 200 and '"choices"' in answer:
            return "passed", (f"{name}: one completion on port {port} with {len(props)} hardening"
                              " properties of vllm.service.j2")  # fmt: skip
        rc, active = h.run(["systemctl", "is-active", name], 10)
        if active.strip() in ("failed", "inactive"):
            _, log = h.run(["journalctl", "-u", name, "-n", "30", "--no-pager", "-o", "cat"], 20)
            return "failed", f"{name} {active.strip()}: {' | '.join(log.strip().splitlines()[-8:])}"
        h.sleep(3)
    _, log = h.run(["journalctl", "-u", name, "-n", "15", "--no-pager", "-o", "cat"], 20)
    return "failed", f"no completion in time: {' | '.join(log.strip().splitlines()[-6:])}"


def stop_unit(h: Host, name: str) -> None:
    h.run(["systemctl", "stop", name], 120)
    h.run(["systemctl", "reset-failed", name], 10)


# --------------------------------------------------------------------------- the run
STEPS: list[tuple[str, Callable[[Smoke], tuple[str, str]], float]] = [
    ("record", do_record, 30),
    ("gpu-verify", do_gpu_verify, 60),
    ("cuda-init", do_cuda_init, 20),
    ("triton", do_triton, 60),
    ("install", do_install, 240),
    ("tiny-model", do_tiny_model, 30),
    ("serve", do_serve, 90),
]


@contextmanager
def cleaned(smoke: Smoke) -> Iterator[None]:
    try:
        yield
    finally:
        for fn in reversed(smoke.cleanups):
            fn()
        smoke.cleanups.clear()


def run_smoke(smoke: Smoke) -> int:
    smoke.started = smoke.host.now()
    smoke.vllm_version = smoke.vllm_version or pinned_version()
    gpus = smoke.host.nvidia_gpus()
    with cleaned(smoke):
        for name, fn, needs in STEPS:
            if gpus == 0:
                smoke.steps.append(Step(name, "skipped", 0.0,
                                        "no NVIDIA GPU on this machine (PCI scan)"))
            elif name == "record" and not smoke.record_dir:
                smoke.steps.append(Step(name, "skipped", 0.0, "no --record DIR"))
            else:
                smoke.step(name, functools.partial(fn, smoke), needs)
    return 1 if any(s.status == "failed" for s in smoke.steps) else 0


def table(steps: list[Step]) -> str:
    width = max(len(s.name) for s in steps)
    rows = [f"{'step':<{width}}  {'result':<7}  {'time':>7}  detail"]
    rows += [f"{s.name:<{width}}  {s.status:<7}  {s.seconds:>6.1f}s  {s.detail}" for s in steps]
    return "\n".join(rows)


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--json", metavar="FILE", help="write the steps as JSON")
    parser.add_argument("--record", metavar="DIR", default="",
                        help="save nvidia-smi's and the driver's raw outputs there")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                        help="seconds for the whole run (default %(default)s)")
    parser.add_argument("--vllm-version", default="", help="default: the role's vllm_version")
    args = parser.parse_args(argv)
    smoke = Smoke(host or RealHost(), budget=args.budget, record_dir=args.record,
                  vllm_version=args.vllm_version)  # fmt: skip
    code = run_smoke(smoke)
    print(table(smoke.steps))
    skipped = [s for s in smoke.steps if s.status == "skipped"]
    print(f"gpu-smoke: {'FAILED' if code else 'passed'}; {len(skipped)} step(s) skipped")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "exit": code, "vllm": smoke.vllm_version, "python": sys.version.split()[0],
            "steps": [asdict(s) for s in smoke.steps],
            "gpu_verify": smoke.state.get("gpu_verify", {}),
            "cuda_init": smoke.state.get("cuda_init", {}), "triton": smoke.state.get("triton", {}),
        }, indent=1) + "\n")  # fmt: skip
    return code


if __name__ == "__main__":
    sys.exit(main())
