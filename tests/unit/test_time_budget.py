"""The README's time budget covers every lab module and Molecule scenario (tests/timing.py)."""
from __future__ import annotations

from pathlib import Path

from tests.timing import budgets, part_of

REPO = Path(__file__).resolve().parents[2]


def test_every_lab_module_and_molecule_scenario_has_a_budget() -> None:
    limits = budgets()
    modules = {f"tests/lab/{p.name}" for p in (REPO / "tests" / "lab").glob("test_*.py")}
    scenarios = {f"molecule {p.parents[2].name}-{p.parent.name}"
                 for p in REPO.glob("roles/*/molecule/*/molecule.yml")}
    wanted = (modules - {"tests/lab/test_molecule.py"}) | scenarios
    assert wanted - limits.keys() == set(), "no budget in README.md's Time budget table"
    assert all(seconds > 0 for seconds in limits.values())


def test_a_molecule_test_counts_in_its_scenario_s_row() -> None:
    nodeid = "tests/lab/test_molecule.py::test_molecule_scenario_passes_on_lab_hosts[vllm-upgrade]"
    assert part_of(nodeid) == "molecule vllm-upgrade"
    assert part_of("tests/unit/test_load.py::test_x[a]") == "tests/unit/test_load.py"
