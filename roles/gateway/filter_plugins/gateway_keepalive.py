"""gateway_keepalive: how long a vLLM instance keeps an idle connection open, from the
environment its unit gets; and the gateway's upstream keep-alive derived from those.

vLLM's API server passes ``VLLM_HTTP_TIMEOUT_KEEP_ALIVE`` (seconds, read with ``int()``,
default 5) to uvicorn as ``timeout_keep_alive``: a connection idle that long after its last
answer is closed (vllm-project/vllm: vllm/envs.py, vllm/entrypoints/openai/api_server.py).
The gateway must stop reusing an idle connection before that, by more than a round trip, or
it now and then writes a request onto a connection whose close is on its way (a 502).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

KEY = "VLLM_HTTP_TIMEOUT_KEEP_ALIVE"


def gateway_keepalive(environments: Iterable[Any], default: Any, where: str) -> int:
    """The instance's keep-alive in seconds: ``KEY`` in the last of ``environments`` (the
    layers the vllm unit combines, in its order) that sets it, else ``default``."""
    value = default
    for env in environments:
        if env is None:
            continue
        if not isinstance(env, Mapping):
            raise AnsibleFilterError(f"environment of worker {where} must be a mapping, "
                                     f"got {env!r}")
        if KEY in env:
            value = env[KEY]
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]+", text):
        raise AnsibleFilterError(
            f"{KEY}={value!r} of worker {where}: must be a whole number of seconds >= 0 "
            "(vLLM reads it with int(); the gateway keeps its idle connections to the worker "
            "for less)")
    return int(text)


def gateway_upstream_keepalive(worker_keepalives: Iterable[Any], margin_s: Any) -> float:
    """The gateway's upstream_keepalive_s: the shortest worker keep-alive minus the margin;
    0 (a new connection per request) when nothing is left."""
    values = [float(v) for v in worker_keepalives]
    if not values:
        return 0.0
    return max(0.0, round(min(values) - float(margin_s), 3))


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"gateway_keepalive": gateway_keepalive,
                "gateway_upstream_keepalive": gateway_upstream_keepalive}
