"""Filters of the nvidia_driver role: what the host's PCI bus, kernel and driver say.

Pure functions over the text the role reads on the host (lspci -nn lines, /proc/version,
/proc/driver/nvidia/version), so that the unit tests drive them with recorded outputs.
"""

from __future__ import annotations

import re
from typing import Any

NVIDIA = "10de"
MELLANOX = "15b3"

# `lspci -Dnn` lines: "0000:05:00.0 Bridge [0680]: NVIDIA Corporation GH100 [H100 NVSwitch]
# [10de:22a3] (rev a1)". The role writes the same shape from sysfs where lspci is missing,
# and appends " vpd=SW_MNG" to Mellanox functions whose VPD carries that marker.
_LSPCI = re.compile(
    r"^(?P<slot>\S+)\s+(?P<class_name>.*?)\s*\[(?P<class>[0-9a-fA-F]{4})\]:\s*(?P<name>.*?)\s*"
    r"\[(?P<vendor>[0-9a-fA-F]{4}):(?P<device>[0-9a-fA-F]{4})\]"
)

# NVSwitch chips that are PCI functions of their own (class 0x0680): A100's (1af1) and
# H100/H200's (22a3) generations. NVIDIA's NVRC counts every 10de function of class 0680,
# and so does the role; the ids name them in messages.
NVSWITCH_DEVICE_IDS = {"1af1": "A100 NVSwitch", "22a3": "H100 NVSwitch"}
# HGX-only Blackwell GPUs (NVLink 5): their NVSwitches sit on the NVLink trays and are
# reached through ConnectX management functions (SW_MNG), not as 10de PCI functions.
NVLINK5_GPU_DEVICE_IDS = {"2901": "B200", "2909": "HGX B200", "3182": "B300"}
_NVLINK5_GPU_NAME = re.compile(r"(?<![A-Za-z0-9])B[23]00(?![0-9])")
# DeepOps' roles/nvidia-dgx/vars/ubuntu-24.04.yml platform table (dgx_os7_platforms):
# product-name patterns with their fabric. GB200/GB300 use IMEX, not the fabric manager.
PLATFORMS: list[tuple[str, bool, bool]] = [
    (r"DGX[ -]?(A100|H100|H200)|DGX(A100|H100|H200)", True, False),
    (r"DGX[ -]?(B200|B300)|DGX(B200|B300)", True, True),
]


def nvidia_pci_devices(text: str) -> list[dict[str, Any]]:
    """Parse lspci -Dnn lines (or the role's sysfs equivalent) into device dicts."""
    devices = []
    for line in text.splitlines():
        m = _LSPCI.match(line.strip())
        if not m:
            continue
        devices.append(
            {
                "slot": m["slot"],
                "class": m["class"].lower(),
                "vendor": m["vendor"].lower(),
                "device": m["device"].lower(),
                "name": m["name"],
                "sw_mng": "vpd=SW_MNG" in line,
            }
        )
    return devices


def _is_gpu(dev: dict[str, Any]) -> bool:
    return bool(dev["vendor"] == NVIDIA and dev["class"].startswith("03"))


def nvidia_fabric(
    devices: list[dict[str, Any]], product_name: str = "", gpu_names: list[str] | None = None
) -> dict[str, Any]:
    """What the host's NVLink fabric needs: fabric manager (NVSwitch), nvlsm (NVLink 5).

    Evidence, any of: NVIDIA functions of class 0680 (NVSwitches, A100/H100/H200 HGX);
    Mellanox functions with SW_MNG in their VPD (NVLink-5 switch management, as NVIDIA's
    NVRC detects them); HGX-only Blackwell GPUs by PCI id or name (B200, B300); the
    product name against DeepOps' DGX platform table.
    """
    gpus = [d for d in devices if _is_gpu(d)]
    nvswitches = [d for d in devices if d["vendor"] == NVIDIA and d["class"] == "0680"]
    sw_mng = [d for d in devices if d["vendor"] == MELLANOX and d["sw_mng"]]
    names = [d["name"] for d in gpus] + list(gpu_names or [])
    nvlink5_gpus = [d["device"] for d in gpus if d["device"] in NVLINK5_GPU_DEVICE_IDS] or [
        n for n in names if _NVLINK5_GPU_NAME.search(n)
    ]
    platform_nvswitch = platform_nvlink5 = False
    for pattern, has_nvswitch, has_nvlink5 in PLATFORMS:
        if product_name and re.search(pattern, product_name):
            platform_nvswitch, platform_nvlink5 = has_nvswitch, has_nvlink5
    # Without a GPU there is nothing for a fabric to serve (and the role skips the host).
    nvlink5 = bool(gpus) and bool(sw_mng or nvlink5_gpus or platform_nvlink5)
    reasons = []
    if nvswitches:
        reasons.append(f"{len(nvswitches)} NVSwitch(es) on the PCI bus (10de class 0680)")
    if sw_mng:
        reasons.append(f"{len(sw_mng)} NVLink switch management function(s) (SW_MNG)")
    if nvlink5_gpus:
        reasons.append("HGX Blackwell GPUs (NVLink 5)")
    if platform_nvswitch:
        reasons.append(f"product {product_name}")
    fabric = bool(gpus) and (bool(nvswitches) or nvlink5 or platform_nvswitch)
    return {
        "gpu_count": len(gpus),
        "gpus": [f"{d['name']} [{d['vendor']}:{d['device']}]" for d in gpus],
        "nvswitch_count": len(nvswitches),
        "nvlink_management_count": len(sw_mng),
        "nvlink5": nvlink5,
        "fabricmanager": fabric,
        "nvlsm": nvlink5,
        "reason": "; ".join(reasons) if reasons else "no NVSwitch found",
    }


# /proc/driver/nvidia/version, first line, in its two layouts:
#   NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.216.03  Wed Oct 30 ... 2024
#   NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.195.03  Release Build  (...)
# The version follows "Kernel Module" (and "for <arch>" in the open layout).
_MODULE_VERSION = re.compile(
    r"^NVRM version:.*?Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)*)(?:\s|$)"
)


def nvidia_module_version(text: str) -> str:
    """The loaded NVIDIA module's version from /proc/driver/nvidia/version, or ''."""
    for line in text.splitlines():
        m = _MODULE_VERSION.match(line.strip())
        if m:
            return m[1]
    return ""


# /proc/version names the compiler the kernel was built with, e.g.
#   ... (x86_64-linux-gnu-gcc-12 (Ubuntu 12.3.0-1ubuntu1~22.04) 12.3.0, GNU ld ...)
#   ... (gcc-12 (Debian 12.2.0-14) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) ...
#   ... (gcc (Ubuntu 11.4.0-1ubuntu1~22.04) 11.4.0, GNU ld ...)
_KERNEL_GCC = re.compile(r"\(\S*?gcc(?:-(\d+))? \([^)]*\) (\d+)\.")


def nvidia_kernel_compiler(proc_version: str) -> str:
    """The gcc package DKMS needs for the running kernel (gcc-<major>), or ''."""
    m = _KERNEL_GCC.search(proc_version)
    return f"gcc-{m[1] or m[2]}" if m else ""


# --- exact package versions ------------------------------------------------------------------
# What the role reads on the host before installing (tasks/packages_read.yml), in sections:
#   == dpkg      dpkg-query -W -f '${db:Status-Abbrev}\t${Package}\t${Version}\n' (driver patterns)
#   == policy    apt-cache policy <the first driver package>
#   == madison   apt-cache madison <the fabric packages>
_SECTION = re.compile(r"^== (\w+)\s*$")


def nvidia_upstream_version(version: str) -> str:
    """A Debian version without epoch and revision: 1:580.95.05-0ubuntu1 -> 580.95.05."""
    version = version.strip().split(":", 1)[-1]
    return re.sub(r"[-~+].*$", "", version)


def _sections(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        m = _SECTION.match(line)
        if m:
            current = m[1]
            out.setdefault(current, [])
        elif current and line.strip():
            out[current].append(line)
    return out


def _installed(lines: list[str]) -> dict[str, str]:
    """Installed packages (dpkg status ii/hi) and their versions."""
    found = {}
    for line in lines:
        parts = line.split("\t")
        if len(parts) == 3 and parts[0].strip()[1:2] == "i" and parts[0].strip()[:1] in "ih":
            found[parts[1].strip()] = parts[2].strip()
    return found


def _candidate(lines: list[str]) -> str:
    for line in lines:
        key, _, value = line.strip().partition(":")
        if key == "Candidate" and value.strip() not in ("", "(none)"):
            return value.strip()
    return ""


def _madison(lines: list[str]) -> dict[str, list[str]]:
    """apt-cache madison rows: " name | version | source" -> {name: [versions]}."""
    found: dict[str, list[str]] = {}
    for line in lines:
        cells = [c.strip() for c in line.split("|")]
        if len(cells) >= 3 and cells[0] and cells[1]:
            found.setdefault(cells[0], []).append(cells[1])
    return found


def nvidia_package_plan(
    state: str,
    branch: str,
    wanted: str,
    loaded: str,
    driver_package: str,
    exact: list[str],
    own_version: list[str],
    left_alone: bool,
) -> dict[str, Any]:
    """The driver version this host runs or will run, and the fabric packages at exactly it.

    The version is, first found: nvidia_driver_version; the loaded driver (nvidia-smi) when it
    is of the branch; the installed version of the first driver package when of the branch;
    apt's candidate for it. `exact` packages (fabric manager, NSCQ, libnvsdm) must exist at
    that version (installed, or in apt's lists): the ones that do not are `missing`.
    `own_version` packages (nvlsm, versioned by date) are installed as apt offers them.
    A host left alone also holds every driver package installed at that version.
    """
    parts = _sections(state)
    installed = _installed(parts.get("dpkg", []))
    madison = _madison(parts.get("madison", []))
    of_branch = re.compile(rf"^{re.escape(str(branch))}\.")
    candidates = [
        ("nvidia_driver_version", nvidia_upstream_version(wanted) if wanted else ""),
        ("loaded", loaded.strip() if of_branch.match(loaded.strip()) else ""),
        ("installed", nvidia_upstream_version(installed.get(driver_package, ""))),
        ("candidate", nvidia_upstream_version(_candidate(parts.get("policy", [])))),
    ]
    usable = [
        (o, v) for o, v in candidates if v and (o == "nvidia_driver_version" or of_branch.match(v))
    ]
    origin, version = usable[0] if usable else ("", "")
    missing = [
        name
        for name in exact
        if version
        and nvidia_upstream_version(installed.get(name, "")) != version
        and version not in [nvidia_upstream_version(v) for v in madison.get(name, [])]
    ]
    other = [
        f"{name} {installed[name]}"
        for name in exact
        if name in installed and nvidia_upstream_version(installed[name]) != version
    ]
    hold_installed = (
        sorted(n for n, v in installed.items() if nvidia_upstream_version(v) == version)
        if left_alone and version
        else []
    )
    return {
        "version": version,
        "origin": origin,
        "install": [f"{name}={version}-*" for name in exact] + list(own_version) if version else [],
        "hold": list(dict.fromkeys(list(exact) + list(own_version) + hold_installed)),
        "missing": missing,
        "other_versions": other,
    }


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "nvidia_pci_devices": nvidia_pci_devices,
            "nvidia_fabric": nvidia_fabric,
            "nvidia_module_version": nvidia_module_version,
            "nvidia_kernel_compiler": nvidia_kernel_compiler,
            "nvidia_upstream_version": nvidia_upstream_version,
            "nvidia_package_plan": nvidia_package_plan,
        }
