"""How many requests a vLLM instance runs at once, so that the load can make requests wait.

vLLM's capacity is --max-num-seqs per engine (times --data-parallel-size engines behind one
API server). The post-check takes it from the inventory exactly as the vllm role renders the
unit (roles/vllm/templates/vllm.service.j2: `vllm_engine_args | combine(inst.args)`, the
instance's args winning; Ansible has already resolved host over group vars), else vLLM's own
default for the device, else (no inventory) the load finds it from the instance's gauges.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from postcheck.fleet import UsageError

# vLLM's defaults for the OpenAI API server when --max-num-seqs is not given, from
# vllm/engine/arg_utils.py (EngineArgs._set_default_args / get_batch_defaults, called from
# _set_default_max_num_seqs_and_batched_tokens_args; the same values from 0.10 to the pinned
# 0.32.0): GPUs with >= 70 GiB that are not A100 (H100, H200, MI300x) 1024, other GPUs 256,
# CPU 128 x (tensor-parallel-size x pipeline-parallel-size); then
# max_num_seqs = min(that, max_num_batched_tokens) when the latter is set.
VLLM_DEFAULT_MAX_NUM_SEQS_GPU = 1024  # H100/H200 (the largest GPU default: the queue fills on any)
VLLM_DEFAULT_MAX_NUM_SEQS_CPU_PER_RANK = 128
VLLM_DEFAULTS_SOURCE = "vLLM's default (vllm/engine/arg_utils.py get_batch_defaults)"


def _arg(args: Mapping[str, Any], name: str) -> Any:
    """A flag as the unit renders it; vLLM's parser also takes underscores for dashes."""
    if name in args:
        return args[name]
    return args.get(name.replace("-", "_"))


def _whole(value: Any, what: str) -> int | None:
    if value is None or value is False:
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        raise UsageError(f"{what} is not a whole number: {value!r}") from None
    if number < 1:
        raise UsageError(f"{what} must be 1 or more: {value!r}")
    return number


def instance_capacity(
    engine_args: Mapping[str, Any], device: str, where: str
) -> tuple[int, str]:
    """(requests the instance runs at once, where that number comes from)."""
    seqs = _whole(_arg(engine_args, "max-num-seqs"), f"max-num-seqs of {where}")
    dp = _whole(_arg(engine_args, "data-parallel-size"), f"data-parallel-size of {where}") or 1
    engines = f" x {dp} data-parallel engines" if dp > 1 else ""
    if seqs is not None:
        return seqs * dp, f"max-num-seqs {seqs}{engines} (inventory)"
    tp = _whole(_arg(engine_args, "tensor-parallel-size"), f"tensor-parallel-size of {where}")
    pp = _whole(_arg(engine_args, "pipeline-parallel-size"), f"pipeline-parallel-size of {where}")
    if device == "cpu":
        ranks = (tp or 1) * (pp or 1)
        seqs, what = VLLM_DEFAULT_MAX_NUM_SEQS_CPU_PER_RANK * ranks, "CPU"
    else:  # gpu, or auto (the role picks the GPU build where a GPU is present)
        seqs, what = VLLM_DEFAULT_MAX_NUM_SEQS_GPU, "GPU (H100/H200)"
    batched = _whole(
        _arg(engine_args, "max-num-batched-tokens"), f"max-num-batched-tokens of {where}"
    )
    if batched is not None and batched < seqs:
        seqs, what = batched, f"{what}, capped by max-num-batched-tokens"
    return seqs * dp, f"{VLLM_DEFAULTS_SOURCE}: {seqs} on {what}{engines}"


def from_inventory(source: str) -> bool:
    """The capacity was set in the inventory (not a default: no need to look further)."""
    return source.endswith("(inventory)")


def queue_margin(capacity: int) -> int:
    """Requests beyond the capacity that wait: a few, and more for big batches (256 -> 4)."""
    return max(4, math.ceil(capacity / 64))
