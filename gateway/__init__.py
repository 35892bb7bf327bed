"""vllm-gateway: the gateway tier in front of vLLM workers (routing, admission, health, metrics)."""

__version__ = "0.1.0"
