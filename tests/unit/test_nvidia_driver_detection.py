"""The nvidia_driver role's filters over recorded outputs: NVSwitch / NVLink-5 detection from
lspci, the loaded module's version, the kernel's compiler, and the APT source reading that
keeps the role's entries from conflicting with the host's.

The filters are the role's own code (roles/nvidia_driver/filter_plugins), imported as Ansible
loads them. The recorded outputs are under fixtures/nvidia (see its README: assembled from
public outputs, as no NVIDIA machine was available here).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO

FIXTURES = Path(__file__).parent / "fixtures" / "nvidia"
PLUGINS = REPO / "roles" / "nvidia_driver" / "filter_plugins"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"nvidia_driver_{name}", PLUGINS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


nv = load("nvidia_driver")
apt = load("nvidia_apt")


def fabric(name: str, product: str = "", gpu_names: list[str] | None = None) -> dict[str, object]:
    text = (FIXTURES / "lspci" / f"{name}.txt").read_text()
    return nv.nvidia_fabric(nv.nvidia_pci_devices(text), product, gpu_names)  # type: ignore[no-any-return]


# (fixture, GPUs, NVSwitch functions, fabric manager, nvlsm)
HOSTS = [
    ("pcie_h100", 2, 0, False, False),
    ("pcie_l40s", 4, 0, False, False),
    ("hgx_h100", 8, 4, True, False),
    ("hgx_h200", 8, 4, True, False),
    ("b200", 8, 0, True, True),
    ("no_gpu", 0, 0, False, False),
    ("sysfs_h100_nvswitch", 2, 1, True, False),
]


@pytest.mark.parametrize(
    ("name", "gpus", "switches", "fm", "nvlsm"), HOSTS, ids=[h[0] for h in HOSTS]
)
def test_fabric_manager_and_nvlsm_only_where_nvswitches_are(
    name: str, gpus: int, switches: int, fm: bool, nvlsm: bool
) -> None:
    found = fabric(name)
    assert found["gpu_count"] == gpus
    assert found["nvswitch_count"] == switches
    assert found["fabricmanager"] is fm, found["reason"]
    assert found["nvlsm"] is nvlsm, found["reason"]
    if not fm:
        assert found["reason"] == "no NVSwitch found"


def test_b200_is_found_by_its_switch_management_functions_and_its_gpu_ids() -> None:
    found = fabric("b200")
    assert (
        found["nvlink_management_count"] == 4
    )  # the four SW_MNG ConnectX-7 functions, not the 8 NICs
    assert "NVLink switch management" in str(found["reason"])
    assert "HGX Blackwell" in str(found["reason"])


def test_b200_without_readable_vpd_is_still_found_by_nvidia_smi_names() -> None:
    """The VPD needs root; nvidia-smi's GPU name is enough (B200s only come as HGX/DGX)."""
    lines = "0000:1b:00.0 Class [0302]: Device [10de:29ff]\n"
    devices = nv.nvidia_pci_devices(lines)
    assert nv.nvidia_fabric(devices, "", ["NVIDIA B200"])["nvlsm"] is True
    # GB200 (NVL72 trays) uses IMEX, not the fabric manager; an RTX PRO 6000 Blackwell is PCIe.
    assert nv.nvidia_fabric(devices, "", ["NVIDIA GB200"])["fabricmanager"] is False
    assert (
        nv.nvidia_fabric(devices, "", ["NVIDIA RTX PRO 6000 Blackwell Server Edition"])[
            "fabricmanager"
        ]
        is False
    )


@pytest.mark.parametrize(
    ("product", "fm", "nvlsm"),
    [
        ("DGXH100", True, False),
        ("DGX H200", True, False),
        ("DGX B200", True, True),
        ("PowerEdge R760xa", False, False),
    ],
)
def test_dgx_product_names_as_deepops_matches_them(product: str, fm: bool, nvlsm: bool) -> None:
    found = fabric("pcie_l40s", product)
    assert (found["fabricmanager"], found["nvlsm"]) == (fm, nvlsm)


def test_no_gpu_host_has_no_fabric_even_with_a_dgx_name() -> None:
    assert fabric("no_gpu", "DGX B200")["nvlsm"] is False


def lines(name: str) -> list[tuple[str, str]]:
    rows = (FIXTURES / name).read_text().splitlines()
    return [tuple(r.rsplit("\t", 1)) for r in rows if not r.startswith("#")]  # type: ignore[misc]


@pytest.mark.parametrize(("line", "version"), lines("proc-driver-nvidia-version.txt"))
def test_loaded_module_version_in_every_layout(line: str, version: str) -> None:
    """The open modules' line says "for x86_64" before the version: the old sed gave "86"."""
    assert (
        nv.nvidia_module_version(line + "\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
        == version
    )


def test_no_module_no_version() -> None:
    assert nv.nvidia_module_version("") == ""


@pytest.mark.parametrize(("proc_version", "package"), lines("proc-version.txt"))
def test_kernel_compiler_from_proc_version(proc_version: str, package: str) -> None:
    assert nv.nvidia_kernel_compiler(proc_version) == package


# --- APT sources --------------------------------------------------------------------------

CLOUD = """==> /etc/apt/sources.list.d/debian.sources
Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

==> /etc/apt/sources.list.d/cuda-debian12-x86_64.list
deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] CUDA /
""".replace("CUDA", "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/")
INSTALLER = """==> /etc/apt/sources.list
# deb cdrom:[Debian GNU/Linux 12.5.0 _Bookworm_ - Official amd64 NETINST]/ bookworm main
deb http://deb.debian.org/debian/ bookworm main non-free-firmware
deb http://deb.debian.org/debian/ bookworm-updates main non-free-firmware
==> /etc/apt/sources.list.d/nvidia-driver-debian.sources
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: contrib
"""
CUDA = "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/"
OWN_CUDA = "/etc/apt/sources.list.d/nvidia-cuda.sources"
OWN_DEB = "/etc/apt/sources.list.d/nvidia-driver-debian.sources"
KEY = "/usr/share/keyrings/debian-archive-keyring.gpg"


def test_cloud_image_contrib_is_added_with_debians_own_key() -> None:
    entries = apt.nvidia_apt_sources(CLOUD)
    plan = apt.nvidia_debian_components(
        entries, "bookworm", "http://deb.debian.org/debian/", ["contrib"], OWN_DEB, KEY
    )
    assert plan == {
        "missing": ["contrib"],
        "signed_by": KEY,
        "suites": ["bookworm", "bookworm-updates"],
        "files": ["/etc/apt/sources.list.d/debian.sources"],
    }


def test_installer_layout_gets_no_signed_by_and_own_file_does_not_count() -> None:
    entries = apt.nvidia_apt_sources(INSTALLER)
    plan = apt.nvidia_debian_components(
        entries,
        "bookworm",
        "http://deb.debian.org/debian",
        ["contrib", "non-free", "non-free-firmware"],
        OWN_DEB,
        KEY,
    )
    assert plan["missing"] == ["contrib", "non-free"]  # non-free-firmware is there already
    assert plan["signed_by"] == ""  # the host's entries name no key: neither may the role's


def test_components_already_enabled_add_nothing() -> None:
    text = CLOUD.replace("Components: main\n", "Components: main contrib non-free\n", 1)
    plan = apt.nvidia_debian_components(
        apt.nvidia_apt_sources(text),
        "bookworm",
        "http://deb.debian.org/debian",
        ["contrib"],
        OWN_DEB,
        KEY,
    )
    assert plan["missing"] == []


def test_cuda_keyring_entry_is_found_for_the_same_repository() -> None:
    entries = apt.nvidia_apt_sources(CLOUD)
    assert apt.nvidia_same_uri(entries, CUDA, OWN_CUDA) == [
        "/etc/apt/sources.list.d/cuda-debian12-x86_64.list"
    ]
    assert apt.nvidia_same_uri(entries, CUDA.replace("debian12", "ubuntu2404"), OWN_CUDA) == []
    own = (
        "==> "
        + OWN_CUDA
        + "\nTypes: deb\nURIs: "
        + CUDA
        + "\nSuites: /\nSigned-By: /etc/apt/keyrings/nvidia-cuda.asc\n"
    )
    assert apt.nvidia_same_uri(apt.nvidia_apt_sources(own), CUDA, OWN_CUDA) == []


def test_disabled_and_commented_entries_do_not_count() -> None:
    text = (
        "==> /etc/apt/sources.list.d/x.sources\nEnabled: no\nTypes: deb\nURIs: "
        + CUDA
        + "\nSuites: /\n\n==> /etc/apt/sources.list.d/y.list\n# deb "
        + CUDA
        + " /\n"
    )
    assert apt.nvidia_same_uri(apt.nvidia_apt_sources(text), CUDA, OWN_CUDA) == []
