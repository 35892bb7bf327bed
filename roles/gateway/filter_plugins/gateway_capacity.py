"""gateway_capacity: an instance's max-num-seqs, resolved by the post-check's own code.

postcheck/capacity.py (instance_capacity) is the one place that knows vLLM's defaults per
device; the role calls it rather than keeping a second copy in Jinja. The controller runs
Ansible from the project's .venv, where the project is installed; from a bare checkout the
repository root is put on the path.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleFilterError

try:
    from postcheck.capacity import instance_capacity
    from postcheck.fleet import UsageError
except ImportError:  # pragma: no cover - a controller without the project installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from postcheck.capacity import instance_capacity
    from postcheck.fleet import UsageError


def gateway_capacity(engine_args: Mapping[str, Any], device: str, where: str) -> int:
    """Requests the instance runs at once: args' max-num-seqs (x data-parallel-size), else
    vLLM's default for the device (vllm_device: cpu, gpu or auto)."""
    if not isinstance(engine_args, Mapping):
        raise AnsibleFilterError(f"{where}: engine args must be a mapping, got {engine_args!r}")
    try:
        capacity, _source = instance_capacity(dict(engine_args), str(device), where)
    except UsageError as e:
        raise AnsibleFilterError(f"capacity of worker {where}: {e}") from None
    return capacity


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"gateway_capacity": gateway_capacity}
