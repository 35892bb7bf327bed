"""Where a `make test` run's time went (registered by tests/conftest.py).

At the end of the run it prints one row per test file and per Molecule scenario (each is one
test of tests/lab/test_molecule.py): the seconds its tests took (setup, call and teardown,
summed: on one xdist worker that is its wall time), how many tests it ran, and its budget
from the README's "Time budget" table, marked OVER where it went past. It never fails a run:
budgets are for planning, not assertions.
"""
from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
# | `tests/lab/test_site.py` | 420 | ... : the budget rows of the README's table.
BUDGET_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*(\d+)\s*\|", re.M)
MOLECULE = "tests/lab/test_molecule.py"


def budgets(readme: Path = README) -> dict[str, int]:
    text = readme.read_text(encoding="utf-8") if readme.exists() else ""
    section = text.split("### Time budget", 1)[1] if "### Time budget" in text else ""
    return {name: int(seconds) for name, seconds in BUDGET_ROW.findall(section)}


def part_of(nodeid: str) -> str:
    """The row a test counts in: its file, or for Molecule its role and scenario."""
    path, _, rest = nodeid.partition("::")
    if path == MOLECULE and "[" in rest:
        return f"molecule {rest.split('[', 1)[1].rstrip(']')}"
    return path


@dataclass
class Row:
    seconds: float = 0.0
    tests: set[str] = field(default_factory=set)
    failed: int = 0


class Timing:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = defaultdict(Row)
        self.started = time.monotonic()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        row = self.rows[part_of(report.nodeid)]
        row.seconds += report.duration
        row.tests.add(report.nodeid)
        if report.failed:
            row.failed += 1

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.rows:
            return
        limits = budgets()
        tr = terminalreporter
        tr.write_sep("=", "time per test file and Molecule scenario")
        tr.write_line(f"{'seconds':>8} {'budget':>7} {'tests':>5}  part")
        for name, row in sorted(self.rows.items(), key=lambda kv: -kv[1].seconds):
            limit = limits.get(name)
            budget = f"{limit:>7}" if limit is not None else f"{'-':>7}"
            mark = "  OVER" if limit is not None and row.seconds > limit else ""
            failed = f"  ({row.failed} failed)" if row.failed else ""
            tr.write_line(f"{row.seconds:8.1f} {budget} {len(row.tests):5}  {name}{mark}{failed}")
        busy = sum(r.seconds for r in self.rows.values())
        tr.write_line(f"{busy:8.1f} {'':7} {sum(len(r.tests) for r in self.rows.values()):5}  "
                      f"all tests, summed over the workers")
        tr.write_line(f"{time.monotonic() - self.started:8.1f} {'':7} {'':5}  wall time of the run")

