"""The nvidia_gpu_exporter role's DCGM fields file holds every field the GPU fault alerts and
the GPU dashboard read, and every field the package's default-counters.csv enables.

No GPU here: the file is checked as text, the alerts as the prometheus role renders them.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from conftest import REPO, TEMPLATES

ROLE = REPO / "roles" / "nvidia_gpu_exporter"
FIELD = re.compile(r"\bDCGM_FI_[A-Z0-9_]+\b")

# Enabled (uncommented) in dcgm-exporter's etc/default-counters.csv at tag 4.5.3-4.8.2
# (commit 691c92762eb551313c825f6efe4ceeee20982801), the release the role pins (4.8.2).
PACKAGE_DEFAULTS = {
    "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_MEM_CLOCK", "DCGM_FI_DEV_MEMORY_TEMP",
    "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL",
    "DCGM_FI_DEV_ENC_UTIL", "DCGM_FI_DEV_DEC_UTIL", "DCGM_FI_DEV_XID_ERRORS",
    "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_RESERVED",
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "DCGM_FI_DEV_VGPU_LICENSE_STATUS",
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_ROW_REMAP_FAILURE", "DCGM_FI_DRIVER_VERSION", "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "DCGM_FI_PROF_DRAM_ACTIVE", "DCGM_FI_PROF_PCIE_TX_BYTES",
    "DCGM_FI_PROF_PCIE_RX_BYTES",
}  # fmt: skip
TYPES = {"gauge", "counter", "label"}


def enabled_fields() -> dict[str, str]:
    """Field -> Prometheus type, for every line of the role's CSV that is not a comment."""
    fields: dict[str, str] = {}
    for line in (ROLE / "templates" / "counters.csv.j2").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, kind, help_text = (part.strip() for part in line.split(",", 2))
        assert FIELD.fullmatch(name) and kind in TYPES and help_text, line
        assert name not in fields, f"{name} twice"
        fields[name] = kind
    return fields


def test_the_role_exports_the_package_defaults_and_the_fault_fields() -> None:
    fields = enabled_fields()
    assert set(fields) - PACKAGE_DEFAULTS == {
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "DCGM_FI_DEV_THERMAL_VIOLATION",
    }
    assert set(fields) >= PACKAGE_DEFAULTS
    assert fields["DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"] == "counter"
    assert fields["DCGM_FI_DEV_THERMAL_VIOLATION"] == "counter"
    assert fields["DCGM_FI_DEV_XID_ERRORS"] == "gauge"


def test_every_field_the_gpu_alerts_and_dashboard_read_is_exported(rendered_rules: Path) -> None:
    alerts = (rendered_rules / "gpu.alerts.yml").read_text()
    read_by_alerts = {
        name
        for group in yaml.safe_load(alerts)["groups"]
        for rule in group["rules"]
        for name in FIELD.findall(rule["expr"])
    }
    assert read_by_alerts == {
        "DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "DCGM_FI_DEV_ROW_REMAP_FAILURE", "DCGM_FI_DEV_THERMAL_VIOLATION",
    }  # fmt: skip
    read_by_dashboard = set(FIELD.findall((TEMPLATES / "dashboards" / "gpu-host.json").read_text()))
    assert read_by_dashboard, "the GPU dashboard reads no DCGM field"
    assert (read_by_alerts | read_by_dashboard) - set(enabled_fields()) == set()


def test_the_default_collectors_path_is_the_file_the_role_writes() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    internal = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    spec = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())
    option = spec["argument_specs"]["main"]["options"]["nvidia_gpu_exporter_collectors"]
    path = internal["__nvidia_gpu_exporter_counters_file"]
    assert defaults["nvidia_gpu_exporter_collectors"] == option["default"] == path
    configure = (ROLE / "tasks" / "configure.yml").read_text()
    condition = "when: nvidia_gpu_exporter_collectors == __nvidia_gpu_exporter_counters_file"
    assert condition in configure
