"""Fixtures: fake servers that stop after each test, inventories written into tmp_path."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
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


def dashboard_checks(gateways: bool = False) -> tuple[int, int, int]:
    """(panel queries, n/a panels, queries of repeated panels) of the repo's dashboards: the
    dashboard checks a fully working fleet passes and skips; repeated panels (the SLO rows)
    are skipped on a fleet without SLOs; the gateway dashboard's queries are skipped on a
    fleet without gateways (the dashboards change; the tests count)."""
    queries = na = repeated = 0
    for path in sorted((TEMPLATES / "dashboards").glob("*.json")):
        q, skipped = panel_queries(Dashboard(path.name, json.loads(path.read_text())))
        if path.name == "gateway.json" and not gateways:
            na += len(q) + len(skipped)
            continue
        queries, na = queries + len(q), na + len(skipped)
        repeated += len([x for x in q if x.repeat])
    return queries, na, repeated


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


ValidateCase = tuple[str, dict[str, Any], "str | None"]
# ansible-playbook processes check_validate_cases runs at once (VALIDATE_PROCESSES=1: one).
VALIDATE_PROCESSES = int(
    os.environ.get("VALIDATE_PROCESSES") or min(4, len(os.sched_getaffinity(0)))
)
# A failed loop says only "One or more items failed": take the first failed item's message.
FAILED_MSG = (
    "(ansible_failed_result.results | default([]) | selectattr('failed', 'defined')"
    " | selectattr('failed') | map(attribute='msg') | list + [ansible_failed_result.msg]) | first"
)


def specific(expected: str) -> bool:
    """A refusal text that names the option's value (`=`) or says why, not a bare name."""
    return "=" in expected or " " in expected


def check_validate_cases(
    role: str,
    cases: list[ValidateCase],
    good_vars: dict[str, Any],
    tmp_path: Path,
    inventory: dict[str, Any] | None = None,
    argument_spec: bool = False,
) -> str:
    """Run the role's tasks/validate.yml once per case, in one ansible-playbook on localhost.

    A case is (name, variables over good_vars, None when it must pass or a text the refusal
    must contain). Fails naming every case that went the wrong way; returns the output.
    With argument_spec, the role's meta/argument_specs.yml main options are checked first,
    as playbooks/preflight.yml does before it runs the role's checks (where type errors and
    unknown or missing suboptions are refused).
    """
    spec_check = [
        {
            "name": "Check options against the role's argument specs",
            "ansible.builtin.validate_argument_spec": {
                "argument_spec": (
                    "{{ (lookup('ansible.builtin.file', "
                    f"'{REPO / 'roles' / role / 'meta' / 'argument_specs.yml'}')"
                    " | from_yaml).argument_specs.main.options }}"
                )
            },
        }
    ]
    plays = [
        {
            "name": f"case {i}",
            "hosts": "localhost",
            "gather_facts": False,
            "vars": {**good_vars, **extra},
            "tasks": [
                {
                    "name": "Validate",
                    "block": [
                        *(spec_check if argument_spec else []),
                        {
                            "name": "Run the checks",
                            "ansible.builtin.include_role": {
                                "name": role,
                                "tasks_from": "validate",
                            },
                        },
                        {"name": "Report", "ansible.builtin.debug": {"msg": f"CASE {i} ACCEPTED"}},
                    ],
                    "rescue": [
                        {
                            "name": "Report",
                            "ansible.builtin.debug": {
                                "msg": f"CASE {i} REFUSED: {{{{ {FAILED_MSG} }}}}"
                            },
                        }
                    ],
                }
            ],
        }
        for i, (_, extra, _) in enumerate(cases)
    ]
    hosts = ["-i", "localhost,", "-c", "local"]
    if inventory is not None:
        hosts = ["-i", str(write_inventory(tmp_path, inventory))]
    # Long lists run as a few ansible-playbook processes side by side (each case is a play
    # of its own, so the split changes nothing but the wall time).
    parts = max(1, min(VALIDATE_PROCESSES, len(plays) // 8))

    def run_part(j: int) -> subprocess.CompletedProcess[str]:
        part = tmp_path / f"part{j}"
        part.mkdir(exist_ok=True)
        (part / "play.yml").write_text(yaml.safe_dump(plays[j::parts], sort_keys=False))
        return run_ansible_playbook(
            [*hosts, str(part / "play.yml")],
            part,
            ANSIBLE_CALLBACK_RESULT_FORMAT="json",  # one line per message
        )

    with ThreadPoolExecutor(parts) as pool:
        procs = list(pool.map(run_part, range(parts)))
    out = "".join(proc.stdout + proc.stderr for proc in procs)
    assert all(proc.returncode == 0 for proc in procs), out
    wrong = []
    for i, (case, _, expected) in enumerate(cases):
        refused = re.search(rf"CASE {i} REFUSED: (.*)", out)
        if expected is None and f"CASE {i} ACCEPTED" not in out:
            wrong.append(f"{case}: refused: {refused and refused.group(1)}")
        elif expected is not None and not refused:
            wrong.append(f"{case}: accepted")
        elif expected is not None and refused and expected not in refused.group(1):
            wrong.append(f"{case}: {refused.group(1)!r} lacks {expected!r}")
        elif expected is not None and refused and not specific(expected):
            # One word ("port") also matches a refusal for another reason.
            wrong.append(f"{case}: expects only {expected!r}; name the refusal: "
                         f"{refused.group(1)!r}")
    assert not wrong, "\n".join(wrong)
    return out


PROMTOOL_TESTS = REPO / "tests" / "promtool"
RULE_FILES = [
    "vllm.rules.yml", "vllm.alerts.yml", "node.alerts.yml", "vllm.slo.yml", "gpu.alerts.yml",
]


def render_rules(dest: Path, vars_file: Path | None = PROMTOOL_TESTS / "vars.yml") -> Path:
    """The prometheus role's rule files, rendered by Ansible into dest (the role's defaults,
    then vars_file: by default the SLOs the promtool tests assume)."""
    dest.mkdir(parents=True, exist_ok=True)
    playbook = str(PROMTOOL_TESTS / "render_rules.yml")
    args = ["-i", "localhost,", playbook, "-e", f"render_dest={dest}"]
    if vars_file is not None:
        args += ["-e", f"render_vars={vars_file}"]
    proc = run_ansible_playbook(args, dest)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dest


def rules_of(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    """(file name, rule) for every rule of the rendered rule files."""
    return [
        (name, rule)
        for name in RULE_FILES
        for group in (yaml.safe_load((directory / name).read_text())["groups"] or [])
        for rule in group["rules"]
    ]


@pytest.fixture(scope="session")
def rendered_rules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_rules(tmp_path_factory.mktemp("rules"))


@pytest.fixture(scope="session")
def recorded_series(rendered_rules: Path) -> dict[str, str]:
    """Recording rule name -> its expression (the SLO rules for the promtool tests' SLOs)."""
    rules = rules_of(rendered_rules)
    return {rule["record"]: rule["expr"] for _, rule in rules if "record" in rule}


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
