"""The nvidia_gpu_exporter role's option checks as site.yml's preflight runs them on a worker
(the role's argument specs, then its tasks/validate.yml), in one real ansible-playbook on
localhost with the lab worker's vLLM instance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import check_validate_cases

TINY = {"name": "tiny", "port": 8000, "model": "/srv/models/tiny-llama",
        "served_model_name": "tiny-llama"}  # fmt: skip
GOOD: dict[str, Any] = {"vllm_instances": [TINY]}
CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("defaults", {}, None),
    ("CUDA major and proprietary set", {"nvidia_gpu_exporter_dcgm_cuda_major": "13",
                                        "nvidia_gpu_exporter_dcgm_proprietary": False}, None),
    ("a vLLM instance on the exporter's port", {"vllm_instances": [{**TINY, "port": 9400}]},
     "nvidia_gpu_exporter_port=9400"),
    ("DCGM CUDA major not a number", {"nvidia_gpu_exporter_dcgm_cuda_major": "thirteen"},
     "nvidia_gpu_exporter_dcgm_cuda_major=thirteen"),
    ("DCGM proprietary neither auto nor a bool", {"nvidia_gpu_exporter_dcgm_proprietary": "maybe"},
     "nvidia_gpu_exporter_dcgm_proprietary=maybe"),
]  # fmt: skip


def test_nvidia_gpu_exporter_refuses_bad_options_naming_them(tmp_path: Path) -> None:
    check_validate_cases("nvidia_gpu_exporter", CASES, GOOD, tmp_path, argument_spec=True)
