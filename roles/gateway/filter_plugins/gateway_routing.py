"""gateway_routing: each pool's ``routing`` mapping, checked by the gateway's own code.

gateway/routing.py (check_routing) is the one place that knows the routing options and their
bounds; the role calls it rather than keeping a second copy in Jinja, so the preflight refuses
exactly what ``vllm-gateway --check-config`` would, naming the role's variables
(``gateway_routing_load_factor``, ``gateway_pool_routing[llama].mode``). The controller runs
Ansible from the project's .venv, where the project is installed; from a bare checkout the
repository root is put on the path.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleFilterError

try:
    from gateway.routing import KEYS, check_routing
except ImportError:  # pragma: no cover - a controller without the project installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from gateway.routing import KEYS, check_routing


def _native(value: Any) -> Any:
    """Numbers given as text (``-e gateway_routing_load_factor=1.5``) as numbers."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def _settings(data: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: (_native(v) if k in ("load_factor", "prefix_chars", "prefix_skip_chars") else v)
           for k, v in data.items()}
    if out.get("session_header") == "":
        out["session_header"] = None  # the role's "none"
    return out


def _prefixed(where: str) -> Callable[[str], str]:
    return lambda key: f"{where}.{key}"


def gateway_routing_problems(fleet: Mapping[str, Any], per_model: Any,
                             models: Sequence[str]) -> list[str]:
    """Every bad routing option: the fleet-wide gateway_routing_* and each
    gateway_pool_routing entry, each message naming the variable and its value."""
    problems: list[str] = []

    def error(where: str, message: str) -> None:
        problems.append(f"{where}: {message}")

    check_routing(_settings(fleet), lambda key: f"gateway_routing_{key}", error)
    if not isinstance(per_model, Mapping):
        return [*problems, f"gateway_pool_routing: must be a mapping of served model name to "
                f"routing options, got {per_model!r}"]
    for model, options in per_model.items():
        where = f"gateway_pool_routing[{model}]"
        if model not in models:
            error(where, f"{model!r} is not a model the workers serve ({', '.join(models)})")
        elif not isinstance(options, Mapping):
            error(where, f"must be a mapping of {', '.join(KEYS)}, got {options!r}")
        else:
            check_routing(_settings(options), _prefixed(where), error)
    return problems


def gateway_routing(fleet: Mapping[str, Any], per_model: Mapping[str, Any],
                    model: str) -> dict[str, Any]:
    """The pool's routing mapping for gateway.yml: the fleet-wide options, the model's own
    over them."""
    merged = {**_settings(fleet), **_settings(per_model.get(model) or {})}
    problems: list[str] = []
    config = check_routing(merged, lambda key: f"routing.{key} of {model}",
                           lambda where, message: problems.append(f"{where}: {message}"))
    if problems:
        raise AnsibleFilterError("; ".join(problems))
    return {"mode": config.mode, "load_factor": config.load_factor,
            "prefix_chars": config.prefix_chars, "prefix_skip_chars": config.prefix_skip_chars,
            "session_header": config.session_header}


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"gateway_routing": gateway_routing,
                "gateway_routing_problems": gateway_routing_problems}
