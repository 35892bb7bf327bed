"""Each role's Molecule scenario on real lab hosts.

create, converge, idempotence, verify, destroy: the sequence in each molecule.yml.
"""
from __future__ import annotations

import pytest

from .conftest import BIN, ROOT, run

SCENARIOS = ROOT.glob("roles/*/molecule/*/molecule.yml")
ROLES_WITH_SCENARIOS = sorted(p.parents[2].name for p in SCENARIOS)


@pytest.mark.lab
@pytest.mark.parametrize("role", ROLES_WITH_SCENARIOS)
def test_molecule_scenario_passes_on_lab_hosts(role: str) -> None:
    proc = run([str(BIN / "molecule"), "test"], cwd=ROOT / "roles" / role, check=False)
    assert proc.returncode == 0, f"molecule test of role {role} failed"
