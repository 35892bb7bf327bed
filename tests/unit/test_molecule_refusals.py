"""Molecule refusal blocks must be able to fail.

A verify block that expects a refusal ends with a `fail` task ("... was accepted") and checks the
refusal in its `rescue`. If the text the rescue looks for also appears in that `fail` message, the
block passes whether the role refused the value or accepted it. This reads every scenario's
playbooks and refuses such blocks.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = sorted(ROOT.glob("roles/*/molecule/*/*.yml"))
LITERAL_IN_MSG = re.compile(r"'([^']+)'\s+in\s+(?:\(\s*)?(?:ansible_failed_result\.msg|\w+_msg)")


def refusal_blocks(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, list):
        for child in node:
            yield from refusal_blocks(child)
    elif isinstance(node, dict):
        block = node.get("block")
        ends_in_fail = isinstance(block, list) and block and "ansible.builtin.fail" in block[-1]
        if ends_in_fail and "rescue" in node:
            yield node
        for value in node.values():
            yield from refusal_blocks(value)


def rescue_conditions(block: dict[str, Any]) -> list[str]:
    conditions: list[str] = []
    for task in block["rescue"]:
        check = task.get("ansible.builtin.assert") if isinstance(task, dict) else None
        if check:
            that = check["that"]
            conditions += [str(c) for c in (that if isinstance(that, list) else [that])]
    return conditions


CASES = [
    (path, block)
    for path in PLAYBOOKS
    for block in refusal_blocks(yaml.safe_load(path.read_text(encoding="utf-8")))
]


def test_the_scenarios_have_refusal_blocks() -> None:
    assert len(CASES) >= 15, [str(p) for p, _ in CASES]


@pytest.mark.parametrize(("path", "block"), CASES,
                         ids=[f"{p.relative_to(ROOT / 'roles')}:{b.get('name')}" for p, b in CASES])
def test_refusal_block_cannot_pass_on_its_own_failure_message(
    path: Path, block: dict[str, Any]
) -> None:
    accepted_msg = str(block["block"][-1]["ansible.builtin.fail"].get("msg", ""))
    conditions = rescue_conditions(block)
    assert conditions, f"{path}: {block.get('name')!r} rescues without checking the refusal"
    looked_for = [lit for cond in conditions for lit in LITERAL_IN_MSG.findall(cond)]
    assert looked_for or any("ansible_failed_task" in c for c in conditions), (
        f"{path}: {block.get('name')!r} checks no refusal text: {conditions}")
    self_matching = [lit for lit in looked_for if lit in accepted_msg]
    assert not self_matching, (
        f"{path}: {block.get('name')!r} passes on its own 'accepted' message {accepted_msg!r}: "
        f"it looks for {self_matching}")


def test_the_check_catches_a_block_that_matches_its_own_message() -> None:
    block = yaml.safe_load("""
- block:
    - ansible.builtin.fail: {msg: nvidia_driver_source=ppa was accepted}
  rescue:
    - ansible.builtin.assert: {that: "'nvidia_driver_source=ppa' in ansible_failed_result.msg"}
""")[0]
    with pytest.raises(AssertionError, match="passes on its own 'accepted' message"):
        test_refusal_block_cannot_pass_on_its_own_failure_message(Path("x.yml"), block)
