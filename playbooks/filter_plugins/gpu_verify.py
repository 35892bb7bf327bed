"""Filters of playbooks/gpu_verify.yml: what the first vLLM start on this machine needs.

Pure functions over what the playbook read (nvidia-smi's outputs, the probes' lines, the
vllm role's preflight decision), so that unit tests drive them with recorded outputs. The
hardware side comes from the nvidia_driver role's own filters (nvidia_fabric,
nvidia_module_version); the vLLM side from the vllm role's preflight (validate_platform).
"""

from __future__ import annotations

import json
import re
from typing import Any

_GPU = re.compile(r"^GPU\s+([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f])\s*$")
_FIELD = re.compile(r"^(\s*)([^:]+?)\s*:\s*(.*?)\s*$")
_CUDA = re.compile(r"CUDA Version:\s*([0-9][0-9.]*)")


def _norm(value: str) -> str:
    """'In Progress', 'InProgress', 'in_progress' -> 'inprogress'."""
    return re.sub(r"[\s_-]+", "", value).lower()


def gpu_verify_fabric(text: str) -> list[dict[str, str]]:
    """Each GPU's Fabric State and Status from `nvidia-smi -q` (empty where there is none).

    The block reads, under each "GPU 00000000:18:00.0" section:
        Fabric
            State                             : Completed
            Status                            : Success
    """
    gpus: list[dict[str, str]] = []
    fabric_indent = -1
    for line in text.splitlines():
        m = _GPU.match(line)
        if m:
            gpus.append({"gpu": m[1], "state": "", "status": ""})
            fabric_indent = -1
            continue
        if not gpus or not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if line.strip() == "Fabric":
            fabric_indent = indent
            continue
        if fabric_indent >= 0 and indent <= fabric_indent:
            fabric_indent = -1
        field = _FIELD.match(line)
        if fabric_indent >= 0 and field and indent > fabric_indent:
            key = field[2].strip().lower()
            if key in ("state", "status") and not gpus[-1][key]:
                gpus[-1][key] = field[3]
    return gpus


def gpu_verify_rows(text: str) -> list[dict[str, str]]:
    """Rows of `--query-gpu=index,name,driver_version,persistence_mode,memory.total`
    `--format=csv,noheader`."""
    rows = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 5 and parts[0].isdigit():
            rows.append(dict(zip(("index", "name", "driver", "persistence", "memory"), parts,
                                 strict=True)))  # fmt: skip
    return rows


def _check(name: str, ok: bool, detail: str, fix: str = "") -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail, "fix": "" if ok else fix}


def _smi_checks(f: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, str]], str]:
    smi = f["smi"]
    rows = gpu_verify_rows(smi["query"])
    driver = rows[0]["driver"] if rows else ""
    out = " ".join((smi["query"] + " " + smi["header"]).split())
    found = _CUDA.search(smi["header"])
    cuda = found[1] if found else ""
    if smi["rc"] == 127:
        fix = "install the NVIDIA driver (site.yml's nvidia_driver role)"
        detail = "nvidia-smi not found"
    elif smi["rc"] == 124:
        fix = "nvidia-smi hangs: look at `dmesg | grep -e NVRM -e Xid`; a reboot usually clears it"
        detail = f"nvidia-smi did not answer within {f['smi_timeout']} s"
    elif "Driver/library version mismatch" in out:
        fix = "the loaded module is older than the libraries (upgrade without reboot): reboot"
        detail = "Driver/library version mismatch"
    else:
        fix = ("the NVIDIA module is not loaded: `dkms status`, `dmesg | grep -e NVRM -e nouveau`"
               " (nouveau bound, Secure Boot refusing an unsigned module)")  # fmt: skip
        detail = f"rc {smi['rc']}: {out[:300]}"
    checks = [_check("nvidia-smi", smi["rc"] == 0 and bool(rows),
                     f"driver {driver}, CUDA {cuda or '?'}" if smi["rc"] == 0 and rows else detail,
                     fix)]  # fmt: skip
    module = f["loaded_module"]
    if smi["rc"] == 0 and rows:
        checks.append(_check(
            "GPUs", len(rows) == f["pci_gpus"],
            f"{len(rows)} listed by nvidia-smi, {f['pci_gpus']} on the PCI bus: "
            + ", ".join(sorted({r["name"] for r in rows})),
            "a GPU the driver does not list fell off the bus or is unsupported: dmesg | grep NVRM"))
        checks.append(_check(
            "kernel module", not module or module == driver,
            f"loaded {module or '(unread)'}, libraries {driver}",
            "the loaded module differs from the libraries: reboot"))
    return checks, rows, cuda


def gpu_verify_checks(f: dict[str, Any]) -> list[dict[str, Any]]:
    """Every check of the first start, in order, each {name, ok, detail, fix}.

    f: pci_gpus, fabric (nvidia_fabric's dict), smi {rc, header, query, q}, smi_timeout,
    loaded_module, fabricmanager (systemctl is-active), uvm ("char"/"missing"/other),
    secure_boot (mokutil --sb-state output, or "no mokutil"), cuda_probe {rc, stdout},
    vllm {version, cuda_major, need_branch, refusal, plan}, compiler (gcc/clang path or '').
    """
    f = {**f, "pci_gpus": int(f["pci_gpus"]), "smi": {**f["smi"], "rc": int(f["smi"]["rc"])},
         "cuda_probe": {**f["cuda_probe"], "rc": int(f["cuda_probe"]["rc"])}}
    checks, rows, _ = _smi_checks(f)
    driver = rows[0]["driver"] if rows else ""
    branch = int(driver.split(".")[0]) if driver[:1].isdigit() else 0
    v = f["vllm"]
    need = int(v["need_branch"] or 0)
    refusal = " ".join(str(v["refusal"] or "").split())
    plan = v["plan"] or {}

    # --- the driver against the pinned vLLM (the vllm role's release table) -----------------
    if refusal and "driver branch" in refusal:
        branch_detail = refusal
    else:
        branch_detail = (f"branch {branch or 'none'}; vLLM {v['version']} is a CUDA"
                         f" {v['cuda_major']} build and needs {need or '?'} or newer")  # fmt: skip
    checks.append(_check("driver branch", need > 0 and branch >= need, branch_detail,
                         f'nvidia_driver_branch: "{need}" (or newer) and run site.yml'))
    if refusal and "driver branch" not in refusal and not plan.get("problem"):
        checks.append(_check("vllm preflight", False, refusal, "see the message"))

    # --- fabric (NVSwitch hosts) --------------------------------------------------------------
    fabric = f["fabric"]
    if fabric["fabricmanager"]:
        states = gpu_verify_fabric(f["smi"]["q"])
        bad = [s for s in states
               if _norm(s["state"]) != "completed" or _norm(s["status"]) not in ("success", "")]
        fm = f["fabricmanager"] or "absent"
        ok = fm == "active" and bool(states) and not bad
        detail = (f"{fabric['reason']}; nvidia-fabricmanager {fm}; fabric state of "
                  f"{len(states)} GPU(s): "
                  + (", ".join(f"{s['gpu']} {s['state'] or '?'}/{s['status'] or '?'}" for s in bad)
                     if bad else ("all Completed" if states else "not reported by nvidia-smi -q")))
        checks.append(_check(
            "fabric", ok, detail,
            "CUDA fails with error 802 until the fabric is Completed: systemctl status"
            " nvidia-fabricmanager, journalctl -u nvidia-fabricmanager (the nvidia_driver role"
            " installs and starts it on NVSwitch hosts; wait for In Progress to finish)"))
    else:
        checks.append(_check("fabric", True, f"{fabric['reason']}: no fabric manager needed"))

    # --- device node, persistence, Secure Boot ------------------------------------------------
    checks.append(_check(
        "/dev/nvidia-uvm", f["uvm"] == "char",
        "present" if f["uvm"] == "char" else f"{f['uvm']} (CUDA needs it; the sandboxed vLLM unit"
        " cannot create it)",
        "the vllm role's nvidia-uvm-init oneshot creates it at boot (systemctl start"
        " nvidia-uvm-init); by hand: nvidia-modprobe -c0 -u"))
    off = [r["index"] for r in rows if r["persistence"] != "Enabled"]
    if rows:
        checks.append(_check(
            "persistence mode", not off,
            "Enabled on every GPU" if not off else f"off on GPU {', '.join(off)}",
            "the nvidia_driver role runs nvidia-persistenced --persistence-mode; by hand:"
            " nvidia-smi -pm 1"))
    sb = " ".join(f["secure_boot"].split())
    sb_on = "SecureBoot enabled" in sb
    checks.append(_check(
        "Secure Boot", not (sb_on and not f["loaded_module"]),
        sb or "unknown",
        "Secure Boot enforces signatures and the NVIDIA module is not loaded: sign it with an"
        " enrolled MOK (nvidia_driver_secure_boot_signing) or disable Secure Boot"))

    # --- CUDA itself --------------------------------------------------------------------------
    probe = f["cuda_probe"]
    try:
        result = json.loads((probe["stdout"] or "{}").strip().splitlines()[-1])
    except (ValueError, IndexError):
        result = {}
    if probe["rc"] == 0 and result.get("ok"):
        detail = (f"cuInit 0, {result.get('devices')} device(s), driver CUDA"
                  f" {result.get('driver_cuda') or '?'}")  # fmt: skip
    elif probe["rc"] == 124:
        detail = "cuInit did not return in time"
    else:
        detail = (f"{result.get('error') or probe['stdout'] or 'no output'}"
                  + (f": {result['hint']}" if result.get("hint") else ""))
    checks.append(_check("CUDA init", probe["rc"] == 0 and bool(result.get("ok")), detail,
                         "see the checks above (fabric, /dev/nvidia-uvm, driver);"
                         " dmesg | grep NVRM"))

    # --- the interpreter vLLM would use (the vllm role's decision) ----------------------------
    python = plan.get("python", "")
    version = plan.get("version", "")
    if plan.get("problem"):
        checks.append(_check("vLLM's Python", False, " ".join(plan["problem"].split()),
                             "see the message"))
    elif plan.get("packages"):
        checks.append(_check(
            "vLLM's Python", False, f"{python} is not installed yet",
            "site.yml's vllm role installs " + " ".join(plan["packages"])))
    else:
        checks.append(_check("vLLM's Python", bool(python), f"{python} (Python {version})",
                             "see the vllm role's preflight"))
    if python and not plan.get("problem"):
        dev = [p for p in plan.get("build_packages", []) if p.endswith("-dev")
               and p.startswith("python")]  # fmt: skip
        include = plan.get("include") or "(its include folder)"
        checks.append(_check(
            "Python.h", plan.get("headers") == "yes",
            f"{include}/Python.h " + ("present" if plan.get("headers") == "yes" else "missing")
            + " (Triton compiles its launcher against it at the first start)",
            ("apt-get install " + " ".join(dev) + " (" if dev else "(")
            + "site.yml's vllm role installs it)"))
    checks.append(_check(
        "C compiler", bool(f["compiler"]), f["compiler"] or "no gcc or clang on PATH",
        "apt-get install gcc g++ libc6-dev (site.yml's vllm role installs them on GPU hosts)"))
    return checks


def gpu_verify_table(checks: list[dict[str, Any]]) -> list[str]:
    """One line per check: 'OK    name  detail' or 'FAIL  name  detail -> fix'."""
    width = max((len(c["name"]) for c in checks), default=0)
    return [f"{'OK' if c['ok'] else 'FAIL':<5} {c['name']:<{width}}  {c['detail']}"
            + (f"  -> {c['fix']}" if c["fix"] else "") for c in checks]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "gpu_verify_fabric": gpu_verify_fabric,
            "gpu_verify_rows": gpu_verify_rows,
            "gpu_verify_checks": gpu_verify_checks,
            "gpu_verify_table": gpu_verify_table,
        }
