"""Shared by every test folder: the table of where a run's time went (tests/timing.py)."""
from __future__ import annotations

import pytest

from .timing import Timing


def pytest_configure(config: pytest.Config) -> None:
    # On the xdist controller, or a run without xdist: the workers report to it.
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(Timing(), "vllm-fleet-timing")
