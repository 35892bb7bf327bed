"""Test doubles shared by the gateway's unit tests and its benchmark (fakes, not vLLM)."""
