"""The unit tests' fake servers: written once, in postcheck/testing/fakes.py (the scale
benchmark in bench/ uses the same ones)."""

from __future__ import annotations

from postcheck.testing.fakes import (
    FakeGrafana,
    FakePrometheus,
    FakeVLLM,
    HttpStateTarget,
    LocalTarget,
    StaticTarget,
    VLLMState,
)

__all__ = [
    "FakeGrafana",
    "FakePrometheus",
    "FakeVLLM",
    "HttpStateTarget",
    "LocalTarget",
    "StaticTarget",
    "VLLMState",
]
