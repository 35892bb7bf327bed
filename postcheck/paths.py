"""Where the repository's shared files are (the post-check runs from a checkout)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "templates"
DASHBOARDS = TEMPLATES / "dashboards"
SIGNALS = TEMPLATES / "signals.yml"
GATEWAY_SIGNALS = TEMPLATES / "gateway-signals.yml"
VLLM_METRICS = TEMPLATES / "vllm-metrics"
# One source of truth for the vLLM release: the role's default.
VLLM_ROLE_DEFAULTS = REPO / "roles" / "vllm" / "defaults" / "main.yml"
