"""Fixtures: fake servers that stop after each test, inventories written into tmp_path."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakes import FakeGrafana, FakePrometheus, FakeVLLM

from postcheck.cli import main
from postcheck.dashboards import Dashboard, panel_queries

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"

# Fast settings for runs against the fakes: the fake Prometheus shows new values at once.
FAST = [
    "--requests",
    "6",
    "--concurrency",
    "4",
    "--invalid",
    "2",
    "--load-seconds",
    "0.4",
    "--timeout",
    "3",
    "--scrape-interval",
    "0.2s",
]


@pytest.fixture(autouse=True)
def _no_grafana_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's environment must not leak Grafana credentials into a test."""
    monkeypatch.delenv("GRAFANA_USER", raising=False)
    monkeypatch.delenv("GRAFANA_PASSWORD", raising=False)


@pytest.fixture
def servers() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for s in started:
        s.stop()


@pytest.fixture
def fake_vllm(servers: list[Any]) -> Callable[..., FakeVLLM]:
    def make(**kwargs: Any) -> FakeVLLM:
        v = FakeVLLM(**kwargs)
        v.start()
        servers.append(v)
        return v

    return make


@pytest.fixture
def fake_prometheus(servers: list[Any]) -> Callable[..., FakePrometheus]:
    def make(vllms: list[FakeVLLM], node_targets: tuple[str, ...] = ()) -> FakePrometheus:
        p = FakePrometheus(vllms, node_targets)
        p.start()
        servers.append(p)
        return p

    return make


@pytest.fixture
def fake_grafana(servers: list[Any]) -> Callable[..., FakeGrafana]:
    def make(**kwargs: Any) -> FakeGrafana:
        g = FakeGrafana(**kwargs)
        g.start()
        servers.append(g)
        return g

    return make


def dashboard_checks() -> tuple[int, int]:
    """(panel queries, n/a panels) of the repo's dashboards: the dashboard checks a fully
    working fleet passes and skips (the dashboards change; the tests count, never assume)."""
    queries = na = 0
    for path in sorted((TEMPLATES / "dashboards").glob("*.json")):
        q, skipped = panel_queries(Dashboard(path.name, json.loads(path.read_text())))
        queries, na = queries + len(q), na + len(skipped)
    return queries, na


def run_ansible_playbook(
    args: list[str], tmp_path: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """The project's ansible-playbook with its config and roles, quiet about localhost."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), *args],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCALHOST_WARNING": "0",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
            "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
            **env,
        },
        timeout=300,
    )


def write_inventory(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Result:
    def __init__(self, code: int, out: str, report: dict[str, Any] | None) -> None:
        self.code = code
        self.out = out
        self.report = report or {}

    def checks(self, name: str, status: str | None = None) -> list[dict[str, Any]]:
        return [
            c
            for c in self.report.get("checks", [])
            if c["name"] == name and (status is None or c["status"] == status)
        ]

    def by_status(self, status: str) -> list[dict[str, Any]]:
        return [c for c in self.report.get("checks", []) if c["status"] == status]


@pytest.fixture
def run_postcheck(tmp_path: Path) -> Callable[..., Result]:
    def run(*args: str) -> Result:
        report_path = tmp_path / "report.json"
        if report_path.exists():
            report_path.unlink()
        out = io.StringIO()
        code = main([*args, "--json", str(report_path)], out=out)
        report = json.loads(report_path.read_text()) if report_path.exists() else None
        return Result(code, out.getvalue(), report)

    return run
