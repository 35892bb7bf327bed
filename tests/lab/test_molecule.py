"""Each role's Molecule scenarios on real lab hosts, one test per role and scenario.

create, converge, idempotence, verify, destroy: the sequence in each molecule.yml.
"""
from __future__ import annotations

import pytest

from .conftest import BIN, ROOT, run

SCENARIOS = sorted(
    (p.parents[2].name, p.parent.name) for p in ROOT.glob("roles/*/molecule/*/molecule.yml")
)


@pytest.mark.lab
@pytest.mark.parametrize(("role", "scenario"), SCENARIOS, ids=[f"{r}-{s}" for r, s in SCENARIOS])
def test_molecule_scenario_passes_on_lab_hosts(role: str, scenario: str) -> None:
    proc = run([str(BIN / "molecule"), "test", "-s", scenario], cwd=ROOT / "roles" / role,
               check=False)
    assert proc.returncode == 0, f"molecule test -s {scenario} of role {role} failed"
