"""The gateway role's routing options: refused in tasks/validate.yml naming the variable and
its value (after the argument specs, as the preflight runs them), and rendered into each pool's
``routing`` mapping of gateway.yml, accepted by ``vllm-gateway --check-config``. The checks are
gateway/routing.py's own, through filter_plugins/gateway_routing.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from conftest import check_validate_cases, run_ansible_playbook, write_inventory
from test_gateway_role import INVENTORY, RENDER

CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("prefix affinity, a pool's own routing, numbers given as text (-e)",
     {"gateway_routing_mode": "prefix_affinity", "gateway_routing_session_header": "X-Session-Id",
      "gateway_routing_load_factor": "2", "gateway_routing_prefix_chars": "512",
      "gateway_pool_routing": {"llama": {"mode": "least_outstanding", "load_factor": 1.5,
                                         "prefix_skip_chars": 900}}}, None),
    ("an unknown mode", {"gateway_routing_mode": "round_robin"},
     "gateway_routing_mode: must be one of least_outstanding, prefix_affinity, got "
     "'round_robin'"),
    ("load factor 1", {"gateway_routing_load_factor": 1},
     "gateway_routing_load_factor: must be a finite number above 1 (a worker may take this "
     "many times the pool's mean in-flight requests), got 1"),
    ("prefix length 0", {"gateway_routing_prefix_chars": 0},
     "gateway_routing_prefix_chars: must be an integer >= 1 (characters), got 0"),
    ("a negative skip", {"gateway_routing_prefix_skip_chars": -1},
     "gateway_routing_prefix_skip_chars: must be an integer >= 0 (characters), got -1"),
    ("a header name with a space", {"gateway_routing_session_header": "X Session"},
     "gateway_routing_session_header: must be an HTTP header name (letters, digits and "
     "!#$%&'*+.^_`|~-) or null, got 'X Session'"),
    ("a pool's unknown mode", {"gateway_pool_routing": {"llama": {"mode": "hash"}}},
     "gateway_pool_routing[llama].mode: must be one of least_outstanding, prefix_affinity, "
     "got 'hash'"),
    ("a pool's unknown option", {"gateway_pool_routing": {"llama": {"prefix_bytes": 64}}},
     "gateway_pool_routing[llama].prefix_bytes: unknown option (known: mode, load_factor, "
     "prefix_chars, prefix_skip_chars, session_header)"),
    ("routing of a model nobody serves", {"gateway_pool_routing": {"mistral": {}}},
     "gateway_pool_routing[mistral]: 'mistral' is not a model the workers serve (llama, "
     "org/qwen)"),
    ("a pool's routing not a mapping", {"gateway_pool_routing": {"llama": "prefix_affinity"}},
     "gateway_pool_routing[llama]: must be a mapping of mode, load_factor, prefix_chars, "
     "prefix_skip_chars, session_header, got 'prefix_affinity'"),
    ("load factor not a number", {"gateway_routing_load_factor": "high"},
     "argument 'gateway_routing_load_factor' is of type str"),
]


def test_validate_refuses_bad_routing_naming_the_variable(tmp_path: Path) -> None:
    check_validate_cases("gateway", CASES, {}, tmp_path, inventory=INVENTORY, argument_spec=True)


def test_each_pool_gets_the_fleet_routing_with_its_own_over_it(tmp_path: Path) -> None:
    play = tmp_path / "render.yml"
    play.write_text(yaml.safe_dump(RENDER, sort_keys=False))
    dest = tmp_path / "gateway.yml"
    proc = run_ansible_playbook(
        ["-i", str(write_inventory(tmp_path, INVENTORY)), str(play), "-e", f"render_dest={dest}",
         "-e", '{"gateway_routing_mode": "prefix_affinity", "gateway_routing_load_factor": 1.5,'
         ' "gateway_pool_routing": {"org/qwen": {"mode": "least_outstanding"}, "llama": '
         '{"prefix_skip_chars": 900, "session_header": "X-Session-Id"}}}'], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pools = {p["model"]: p for p in yaml.safe_load(dest.read_text())["pools"]}
    assert pools["llama"]["routing"] == {
        "mode": "prefix_affinity", "load_factor": 1.5, "prefix_chars": 256,
        "prefix_skip_chars": 900, "session_header": "X-Session-Id"}
    assert pools["org/qwen"]["routing"] == {
        "mode": "least_outstanding", "load_factor": 1.5, "prefix_chars": 256,
        "prefix_skip_chars": 0, "session_header": None}
    check = subprocess.run(
        [str(Path(sys.executable).parent / "vllm-gateway"), "--check-config", str(dest)],
        capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
